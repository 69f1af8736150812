/*
 * ledger._fastpath: the writer's fast path for the commonest command, an accepted transfer.
 *
 * Why C: the single writer is one thread under the GIL. In Python a transfer costs ~40 us in
 * Processor.process (validation, command hash, decision, sealing, records), while the
 * pipeline around it costs ~14 us, so a ratio of 0.30 against raw COPY (~21 us per transfer
 * in all) cannot be reached in Python (README, "What limits them").
 *
 * The contract is narrow on purpose, like projections/_native.c on the read side.
 * ``transfer(processor, raw)`` returns the very Outcome that ``Processor.process`` would
 * return, with the same changes to the processor and its state, or None before changing
 * anything, and Python then decides. It returns None for anything but a plain accepted
 * transfer: a field that needs escaping or is not ASCII, a key already known, any rejection
 * (unknown client, insufficient funds, too many decimals...), an amount beyond 128 bits, a
 * full idempotency cache. So it never rejects or explains anything itself, and
 * tests/test_fastpath.py holds it to the Python path command by command.
 *
 * ``process_all(processor, commands, results, events, records)`` is the writer's loop over a
 * caller's commands (Processor.process_all): accepted transfers through the same code, the
 * rest through ``processor._process``, appending what the Python loop appends, and building
 * no Outcome for the accepted transfers. It offers the GIL every 32 commands.
 *
 * The two SHA-256 (command hash, event hash) call OpenSSL's SHA256_* directly, found in the
 * libcrypto hashlib loaded; without it, through hashlib as before (same digests). Attribute
 * and field names are interned once. Each of these was a few microseconds per transfer.
 *
 * Once it starts changing state it cannot stop halfway except on an internal error (out of
 * memory), which raises: the writer then treats the command as a fault and rebuilds its state
 * from the store, as it does for any exception from a decider.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <datetime.h>
#include <stdint.h>
#include <string.h>
#include <time.h>
#include <dlfcn.h>

#define MAX_BODY 4096
#define MAX_DIGITS 37 /* whole digits + scale: below 10^37, inside a signed 128-bit integer */

static PyObject *g_scales;      /* dict asset code -> scale (int) */
static PyObject *g_result;      /* ledger.results.CommandResult */
static PyObject *g_record;      /* ledger.store.CommandRecord */
static PyObject *g_outcome;     /* ledger.processing.Outcome */
static PyObject *g_sha256;      /* hashlib.sha256 */
static PyObject *g_utc;         /* datetime.UTC */
static long long g_recent;      /* processing.RECENT_ENTRIES */
static Py_ssize_t g_known_max;  /* processing.KNOWN_KEYS */
static __int128 g_max_units;    /* money.MAX_UNITS */
static PyObject *s_transfer, *s_transferred, *s_accepted, *s_subs, *s_hexdigest;
/* Attribute and field names, interned once: a lookup by a C string would build, hash and
 * free a str on every call (a fifth of the path's instructions, by callgrind). */
static PyObject *n_state, *n_known, *n_ledger, *n_clients, *n_balances, *n_head_hash,
    *n_position, *n_system_clock, *n_last_time, *n_recent, *n_process, *n_result, *n_events,
    *n_record, *n_replayed;
static PyObject *n_fields[7];

/* SHA-256 straight from the OpenSSL that hashlib already loaded (see load_sha256); NULL when
 * it cannot be found, and hashlib is called instead. */
typedef int (*sha_init_fn)(void *);
typedef int (*sha_update_fn)(void *, const void *, size_t);
typedef int (*sha_final_fn)(unsigned char *, void *);
static sha_init_fn f_sha_init;
static sha_update_fn f_sha_update;
static sha_final_fn f_sha_final;

typedef struct {
    char *p;
    char *end;
} Buffer;

static int
put(Buffer *b, const char *s, Py_ssize_t n)
{
    if (b->end - b->p < n) {
        return 0;
    }
    memcpy(b->p, s, (size_t)n);
    b->p += n;
    return 1;
}

#define PUT(b, lit) put((b), (lit), (Py_ssize_t)(sizeof(lit) - 1))

/* A str of plain ASCII that JSON writes as is (printable, no quote, no backslash). */
static int
plain_text(PyObject *value, const char **s, Py_ssize_t *n)
{
    if (!PyUnicode_CheckExact(value) || !PyUnicode_IS_ASCII(value)) {
        return 0;
    }
    *s = (const char *)PyUnicode_DATA(value);
    *n = PyUnicode_GET_LENGTH(value);
    for (Py_ssize_t i = 0; i < *n; i++) {
        unsigned char c = (unsigned char)(*s)[i];
        if (c < 0x20 || c > 0x7e || c == '"' || c == '\\') {
            return 0;
        }
    }
    return 1;
}

static int
alnum(char c)
{
    return (c >= 'A' && c <= 'Z') || (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9');
}

/* ledger.commands.Id: ^[A-Za-z0-9][A-Za-z0-9_.\-]{0,63}$ */
static int
is_id(const char *s, Py_ssize_t n)
{
    if (n < 1 || n > 64 || !alnum(s[0])) {
        return 0;
    }
    for (Py_ssize_t i = 1; i < n; i++) {
        if (!alnum(s[i]) && s[i] != '_' && s[i] != '.' && s[i] != '-') {
            return 0;
        }
    }
    return 1;
}

/* ledger.commands.AssetCode: ^[A-Z0-9]{2,10}$ */
static int
is_asset_code(const char *s, Py_ssize_t n)
{
    if (n < 2 || n > 10) {
        return 0;
    }
    for (Py_ssize_t i = 0; i < n; i++) {
        if (!((s[i] >= 'A' && s[i] <= 'Z') || (s[i] >= '0' && s[i] <= '9'))) {
            return 0;
        }
    }
    return 1;
}

/* A positive amount as money.parse_positive_units reads it, within 128 bits; 0 otherwise. */
static int
amount_units(const char *s, Py_ssize_t n, int scale, __int128 *units)
{
    Py_ssize_t dot = -1;
    for (Py_ssize_t i = 0; i < n; i++) {
        if (s[i] == '.' && dot < 0) {
            dot = i;
        }
        else if (s[i] < '0' || s[i] > '9') {
            return 0;
        }
    }
    Py_ssize_t whole_end = dot < 0 ? n : dot;
    Py_ssize_t frac_len = dot < 0 ? 0 : n - dot - 1;
    /* parse_units refuses more than 40 whole digits, leading zeros included. */
    if (whole_end == 0 || whole_end > 40 || (dot >= 0 && frac_len == 0) || frac_len > scale) {
        return 0; /* "", ".5", "5." or too many decimals: the Python path says which */
    }
    Py_ssize_t first = 0;
    while (first < whole_end - 1 && s[first] == '0') {
        first++; /* leading zeros, as int() reads them */
    }
    if (whole_end - first + scale > MAX_DIGITS) {
        return 0;
    }
    __int128 value = 0;
    for (Py_ssize_t i = first; i < whole_end; i++) {
        value = value * 10 + (s[i] - '0');
    }
    for (int i = 0; i < scale; i++) {
        value = value * 10 + (i < frac_len ? s[dot + 1 + i] - '0' : 0);
    }
    if (value <= 0 || value > g_max_units) {
        return 0;
    }
    *units = value;
    return 1;
}

/* Decimal digits of a positive value; returns their count. 128-bit division only for the
 * digits while the value is beyond 64 bits (ETH amounts), 64-bit arithmetic for the rest. */
static int
digits_of(__int128 value, char *out)
{
    char tmp[48];
    int n = 0;
    while (value > (__int128)UINT64_MAX) {
        tmp[n++] = (char)('0' + (int)(value % 10));
        value /= 10;
    }
    uint64_t small = (uint64_t)value;
    do {
        tmp[n++] = (char)('0' + (int)(small % 10));
        small /= 10;
    } while (small > 0);
    for (int i = 0; i < n; i++) {
        out[i] = tmp[n - 1 - i];
    }
    return n;
}

/* money.format_units: exactly ``scale`` decimals, a sign for negative values. */
static int
put_amount(Buffer *b, __int128 units, int scale, int negative)
{
    char digits[48];
    int n = digits_of(units, digits);
    char padded[96];
    int width = n > scale + 1 ? n : scale + 1;
    memset(padded, '0', (size_t)(width - n));
    memcpy(padded + width - n, digits, (size_t)n);
    if (negative && !PUT(b, "-")) {
        return 0;
    }
    if (scale == 0) {
        return put(b, padded, width);
    }
    return put(b, padded, width - scale) && PUT(b, ".") && put(b, padded + width - scale, scale);
}

static int
put_units(Buffer *b, __int128 units, int negative)
{
    char digits[48];
    int n = digits_of(units, digits);
    return (!negative || PUT(b, "-")) && put(b, digits, n);
}

static int
put_int(Buffer *b, long long value)
{
    char text[48];
    int n = digits_of(value < 0 ? -(__int128)value : (__int128)value, text);
    return (value >= 0 || PUT(b, "-")) && put(b, text, n);
}

static int
put_str(Buffer *b, const char *s, Py_ssize_t n)
{
    return PUT(b, "\"") && put(b, s, n) && PUT(b, "\"");
}

static PyObject *
units_object(__int128 value)
{
    if (value >= INT64_MIN && value <= INT64_MAX) {
        return PyLong_FromLongLong((long long)value);
    }
    char text[48];
    int n = digits_of(value < 0 ? -value : value, text + 1);
    text[0] = '-';
    char *start = value < 0 ? text : text + 1;
    start[n + (value < 0)] = '\0';
    return PyLong_FromString(start, NULL, 10);
}

/* SHA-256 of some bytes as 64 hex digits, by OpenSSL: its SHA256_* functions when
 * load_sha256 found them, else through hashlib (the same implementation, ~5x the cost). */
static PyObject *
sha256_hex(const char *s, Py_ssize_t n)
{
    if (f_sha_init == NULL) {
        PyObject *data = PyBytes_FromStringAndSize(s, n);
        if (data == NULL) {
            return NULL;
        }
        PyObject *hash = PyObject_CallOneArg(g_sha256, data);
        Py_DECREF(data);
        if (hash == NULL) {
            return NULL;
        }
        PyObject *hex = PyObject_CallMethodNoArgs(hash, s_hexdigest);
        Py_DECREF(hash);
        return hex;
    }
    _Alignas(16) unsigned char ctx[256]; /* SHA256_CTX is 112 bytes in OpenSSL 1.1 and 3 */
    unsigned char md[32];
    if (!f_sha_init(ctx) || !f_sha_update(ctx, s, (size_t)n) || !f_sha_final(md, ctx)) {
        PyErr_SetString(PyExc_RuntimeError, "_fastpath: SHA-256 failed");
        return NULL;
    }
    PyObject *hex = PyUnicode_New(64, 127);
    if (hex == NULL) {
        return NULL;
    }
    static const char digits[] = "0123456789abcdef";
    Py_UCS1 *out = PyUnicode_1BYTE_DATA(hex);
    for (int i = 0; i < 32; i++) {
        out[2 * i] = (Py_UCS1)digits[md[i] >> 4];
        out[2 * i + 1] = (Py_UCS1)digits[md[i] & 15];
    }
    return hex;
}

/* Find SHA256_Init/Update/Final in the libcrypto that hashlib loaded (RTLD_NOLOAD: never a
 * second OpenSSL), and keep them only if they hash a known message right. */
static void
load_sha256(void)
{
    static const char *const names[] = {"libcrypto.so.3", "libcrypto.so.1.1", "libcrypto.so"};
    f_sha_init = NULL;
    for (size_t i = 0; i < sizeof names / sizeof names[0]; i++) {
        void *lib = dlopen(names[i], RTLD_NOW | RTLD_NOLOAD);
        if (lib == NULL) {
            continue;
        }
        sha_init_fn init = (sha_init_fn)dlsym(lib, "SHA256_Init");
        sha_update_fn update = (sha_update_fn)dlsym(lib, "SHA256_Update");
        sha_final_fn final = (sha_final_fn)dlsym(lib, "SHA256_Final");
        if (init == NULL || update == NULL || final == NULL) {
            continue; /* the handle stays open: it only counts a reference to a loaded lib */
        }
        static const unsigned char expected[32] = {
            0xba, 0x78, 0x16, 0xbf, 0x8f, 0x01, 0xcf, 0xea, 0x41, 0x41, 0x40,
            0xde, 0x5d, 0xae, 0x22, 0x23, 0xb0, 0x03, 0x61, 0xa3, 0x96, 0x17,
            0x7a, 0x9c, 0xb4, 0x10, 0xff, 0x61, 0xf2, 0x00, 0x15, 0xad}; /* SHA-256("abc") */
        _Alignas(16) unsigned char ctx[256];
        unsigned char md[32];
        if (init(ctx) && update(ctx, "abc", 3) && final(md, ctx) &&
            memcmp(md, expected, 32) == 0) {
            f_sha_update = update;
            f_sha_final = final;
            f_sha_init = init;
            return;
        }
    }
}

/* Days since 1970-01-01 of a civil date (Howard Hinnant's algorithm). */
static long long
days_from_civil(long long y, int m, int d)
{
    y -= m <= 2;
    long long era = (y >= 0 ? y : y - 399) / 400;
    long long yoe = y - era * 400;
    long long doy = (153 * (m + (m > 2 ? -3 : 9)) + 2) / 5 + d - 1;
    long long doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    return era * 146097 + doe - 719468;
}

static void
civil_from_days(long long z, int *y, int *m, int *d)
{
    z += 719468;
    long long era = (z >= 0 ? z : z - 146096) / 146097;
    long long doe = z - era * 146097;
    long long yoe = (doe - doe / 1460 + doe / 36524 - doe / 146096) / 365;
    long long doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    long long mp = (5 * doy + 2) / 153;
    *d = (int)(doy - (153 * mp + 2) / 5 + 1);
    *m = (int)(mp < 10 ? mp + 3 : mp - 9);
    *y = (int)(yoe + era * 400 + (*m <= 2));
}

/* 1 if the processor's last clock reading is an aware datetime in UTC (as the system clock
 * makes them), 0 if not, -1 on error. */
static int
last_time_in_utc(PyObject *processor)
{
    PyObject *last = PyObject_GetAttr(processor, n_last_time);
    if (last == NULL) {
        return -1;
    }
    int utc = PyDateTime_CheckExact(last) && PyDateTime_DATE_GET_TZINFO(last) == g_utc;
    Py_DECREF(last);
    return utc;
}

/* Digits of a time field, then a separator unless 0; returns the end. */
static char *
two(char *p, int value, char sep)
{
    p[0] = (char)('0' + value / 10 % 10);
    p[1] = (char)('0' + value % 10);
    if (sep) {
        p[2] = sep;
        return p + 3;
    }
    return p + 2;
}

static char *
four(char *p, int value, char sep)
{
    p[0] = (char)('0' + value / 1000 % 10);
    p[1] = (char)('0' + value / 100 % 10);
    return two(p + 2, value % 100, sep);
}

/* Processor.now() for the system clock: the wall clock in UTC, never before the last time
 * handed out (``_last_time``, kept a datetime for the Python path), as isoformat() writes it. */
static PyObject *
system_now(PyObject *processor, char *iso, Py_ssize_t *iso_len)
{
    struct timespec ts;
    if (clock_gettime(CLOCK_REALTIME, &ts) != 0) {
        PyErr_SetFromErrno(PyExc_OSError);
        return NULL;
    }
    long long now = (long long)ts.tv_sec * 1000000 + ts.tv_nsec / 1000;
    PyObject *last = PyObject_GetAttr(processor, n_last_time);
    if (last == NULL) {
        return NULL;
    }
    if (!PyDateTime_Check(last)) {
        Py_DECREF(last);
        PyErr_SetString(PyExc_TypeError, "_fastpath: _last_time is not a datetime");
        return NULL;
    }
    long long last_us =
        (days_from_civil(PyDateTime_GET_YEAR(last), PyDateTime_GET_MONTH(last),
                         PyDateTime_GET_DAY(last)) *
             86400 +
         PyDateTime_DATE_GET_HOUR(last) * 3600 + PyDateTime_DATE_GET_MINUTE(last) * 60 +
         PyDateTime_DATE_GET_SECOND(last)) *
            1000000 +
        PyDateTime_DATE_GET_MICROSECOND(last);
    Py_DECREF(last);
    if (now < last_us) {
        now = last_us;
    }
    /* Floor division: a clock before 1970 is negative, and C's / rounds toward zero. */
    long long micro = now % 1000000, seconds = now / 1000000;
    if (micro < 0) {
        micro += 1000000;
        seconds -= 1;
    }
    long long days = seconds / 86400, rest = seconds % 86400;
    if (rest < 0) {
        rest += 86400;
        days -= 1;
    }
    int year, month, day;
    civil_from_days(days, &year, &month, &day);
    int second_of_day = (int)rest;
    int hour = second_of_day / 3600, minute = second_of_day / 60 % 60, second = second_of_day % 60;
    PyObject *stamp = PyDateTimeAPI->DateTime_FromDateAndTime(
        year, month, day, hour, minute, second, (int)micro, g_utc, PyDateTimeAPI->DateTimeType);
    if (stamp == NULL) {
        return NULL;
    }
    if (year < 1 || year > 9999) {
        Py_DECREF(stamp); /* unreachable: datetime refuses such years above */
        PyErr_SetString(PyExc_OverflowError, "_fastpath: year out of range");
        return NULL;
    }
    /* isoformat(): YYYY-MM-DDTHH:MM:SS[.ffffff]+00:00 */
    char *p = iso;
    p = two(four(p, year, '-'), month, '-');
    p = two(two(p, day, 'T'), hour, ':');
    p = two(p, minute, ':');
    p = two(p, second, 0);
    if (micro) {
        *p++ = '.';
        for (int i = 5; i >= 0; i--) {
            p[i] = (char)('0' + micro % 10);
            micro /= 10;
        }
        p += 6;
    }
    memcpy(p, "+00:00", 6);
    *iso_len = p + 6 - iso;
    return stamp;
}

/* Processor.now() as the processor has it (a test's clock): the time and its isoformat(). */
static PyObject *
processor_now(PyObject *processor, char *iso, Py_ssize_t *iso_len)
{
    PyObject *stamp = PyObject_CallMethod(processor, "now", NULL);
    if (stamp == NULL) {
        return NULL;
    }
    PyObject *text = PyObject_CallMethod(stamp, "isoformat", NULL);
    const char *s;
    Py_ssize_t n;
    if (text == NULL || !plain_text(text, &s, &n) || n >= 64) {
        if (text != NULL) {
            PyErr_SetString(PyExc_ValueError, "_fastpath: the clock's time is not plain text");
        }
        Py_XDECREF(text);
        Py_DECREF(stamp);
        return NULL;
    }
    memcpy(iso, s, (size_t)n);
    *iso_len = n;
    Py_DECREF(text);
    return stamp;
}

typedef struct {
    const char *key, *client, *from, *to, *asset, *amount;
    Py_ssize_t key_len, client_len, from_len, to_len, asset_len, amount_len;
    PyObject *key_obj;
    PyObject *held[7]; /* the command's values, owned while their text is read */
    int scale;
    __int128 units;
} Transfer;

static void
release(Transfer *t)
{
    for (int i = 0; i < 7; i++) {
        Py_CLEAR(t->held[i]);
    }
}

/* The command as pydantic validates it, in the plain form this path takes; 0 otherwise. */
static int
read_command(PyObject *raw, Transfer *t)
{
    if (!PyDict_CheckExact(raw) || PyDict_GET_SIZE(raw) != 7) {
        return 0;
    }
    /* Only exact str keys: then the lookups below compare strings and run no Python code
     * (a key object's own __eq__ could change the dict under our feet). */
    Py_ssize_t pos = 0;
    PyObject *name, *item;
    while (PyDict_Next(raw, &pos, &name, &item)) {
        if (!PyUnicode_CheckExact(name)) {
            return 0;
        }
    }
    for (int i = 0; i < 7; i++) {
        PyObject *value = PyDict_GetItemWithError(raw, n_fields[i]);
        if (value == NULL) {
            return 0; /* a missing field (so an unknown one is there instead) */
        }
        /* Owned at once: Python code runs later (hashing, dataclasses), and the text
         * pointers must stay valid whatever it does to the caller's dict. */
        t->held[i] = Py_NewRef(value);
    }
    PyObject *type = t->held[0], *key = t->held[1], *client = t->held[2], *from = t->held[3];
    PyObject *to = t->held[4], *asset = t->held[5], *amount = t->held[6];
    if (!PyUnicode_CheckExact(type) || PyUnicode_Compare(type, s_transfer) != 0) {
        return 0;
    }
    if (!plain_text(key, &t->key, &t->key_len) || t->key_len < 1 || t->key_len > 200 ||
        !plain_text(client, &t->client, &t->client_len) || !is_id(t->client, t->client_len) ||
        !plain_text(from, &t->from, &t->from_len) || !is_id(t->from, t->from_len) ||
        !plain_text(to, &t->to, &t->to_len) || !is_id(t->to, t->to_len) ||
        !plain_text(asset, &t->asset, &t->asset_len) || !is_asset_code(t->asset, t->asset_len) ||
        !plain_text(amount, &t->amount, &t->amount_len) || t->amount_len < 1 ||
        t->amount_len > 80) {
        return 0;
    }
    PyObject *scale = PyDict_GetItemWithError(g_scales, asset);
    if (scale == NULL) {
        return 0; /* unknown asset (a rejection), or an error the Python path meets too */
    }
    t->scale = (int)PyLong_AsLong(scale);
    if (t->scale < 0 || t->scale > 36 ||
        !amount_units(t->amount, t->amount_len, t->scale, &t->units)) {
        PyErr_Clear();
        return 0;
    }
    if (t->from_len == t->to_len && memcmp(t->from, t->to, (size_t)t->from_len) == 0) {
        return 0; /* same_sub_account */
    }
    t->key_obj = key;
    return 1;
}

/* accounts.client_account(client, sub): client:<client>:<sub>:available (ids are ASCII). */
static PyObject *
account_name(const Transfer *t, const char *sub, Py_ssize_t sub_len)
{
    char text[160]; /* ids are at most 64 characters each */
    Buffer b = {text, text + sizeof text};
    if (!(PUT(&b, "client:") && put(&b, t->client, t->client_len) && PUT(&b, ":") &&
          put(&b, sub, sub_len) && PUT(&b, ":available"))) {
        PyErr_SetString(PyExc_ValueError, "_fastpath: account name too long");
        return NULL;
    }
    return PyUnicode_FromStringAndSize(text, b.p - text);
}


/* The parts of the decision that can refuse: client, sub-accounts, funds. 1 to go on. */
static int
decide(PyObject *state, const Transfer *t, PyObject *from_key)
{
    PyObject *clients = PyObject_GetAttr(state, n_clients);
    PyObject *balances = clients == NULL ? NULL : PyObject_GetAttr(state, n_balances);
    int ok = 0;
    if (clients == NULL || balances == NULL || !PyDict_Check(clients) || !PyDict_Check(balances)) {
        goto done;
    }
    PyObject *client = PyUnicode_FromStringAndSize(t->client, t->client_len);
    if (client == NULL) {
        goto done;
    }
    PyObject *found = PyDict_GetItemWithError(clients, client);
    Py_DECREF(client);
    if (found == NULL || !PyDict_Check(found)) {
        goto done; /* unknown_client */
    }
    PyObject *subs = PyDict_GetItemWithError(found, s_subs);
    if (subs == NULL || !PyAnySet_Check(subs)) {
        goto done;
    }
    Py_INCREF(subs); /* owned while the lookups below run */
    PyObject *from = PyUnicode_FromStringAndSize(t->from, t->from_len);
    PyObject *to = PyUnicode_FromStringAndSize(t->to, t->to_len);
    int has = from != NULL && to != NULL && PySet_Contains(subs, from) == 1 &&
              PySet_Contains(subs, to) == 1;
    Py_XDECREF(from);
    Py_XDECREF(to);
    Py_DECREF(subs);
    if (!has) {
        goto done; /* unknown_sub_account */
    }
    PyObject *balance = PyDict_GetItemWithError(balances, from_key);
    if (balance == NULL && PyErr_Occurred()) {
        goto done;
    }
    PyObject *units = units_object(t->units);
    PyObject *have = balance == NULL ? PyLong_FromLong(0) : PyNumber_Negative(balance);
    int enough = units != NULL && have != NULL && PyObject_RichCompareBool(have, units, Py_GE) == 1;
    Py_XDECREF(units);
    Py_XDECREF(have);
    if (!enough) {
        goto done; /* insufficient_funds */
    }
    ok = 1;
done:
    Py_XDECREF(clients);
    Py_XDECREF(balances);
    return ok;
}

/* balances[key] += delta, dropping the key at zero, as LedgerState.apply does. */
static int
add_balance(PyObject *balances, PyObject *key, PyObject *delta)
{
    PyObject *before = PyDict_GetItemWithError(balances, key);
    if (before == NULL && PyErr_Occurred()) {
        return -1;
    }
    PyObject *zero = PyLong_FromLong(0);
    if (zero == NULL) {
        return -1;
    }
    PyObject *total = PyNumber_Add(before == NULL ? zero : before, delta);
    Py_DECREF(zero);
    if (total == NULL) {
        return -1;
    }
    int is_zero = PyObject_Not(total);
    int status;
    if (is_zero < 0) {
        status = -1;
    }
    else if (is_zero) {
        status = before == NULL ? 0 : PyDict_DelItem(balances, key);
    }
    else {
        status = PyDict_SetItem(balances, key, total);
    }
    Py_DECREF(total);
    return status;
}

/* An Outcome from the Python path, appended as Processor.process_all does: its result, its
 * events, and its record unless it was replayed. Steals ``outcome``; 1 on success. */
static int
append_outcome(PyObject *outcome, PyObject *results, PyObject *events, PyObject *records)
{
    if (outcome == NULL) {
        return 0;
    }
    PyObject *result = PyObject_GetAttr(outcome, n_result);
    PyObject *more = result == NULL ? NULL : PyObject_GetAttr(outcome, n_events);
    PyObject *record = more == NULL ? NULL : PyObject_GetAttr(outcome, n_record);
    Py_DECREF(outcome);
    int ok = result != NULL && more != NULL && record != NULL &&
             PyList_Append(results, result) == 0 &&
             PyList_SetSlice(events, PY_SSIZE_T_MAX, PY_SSIZE_T_MAX, more) == 0;
    if (ok && record != Py_None) {
        PyObject *replayed = PyObject_GetAttr(result, n_replayed);
        int was = replayed == NULL ? -1 : PyObject_IsTrue(replayed);
        Py_XDECREF(replayed);
        ok = was == 1 || (was == 0 && PyList_Append(records, record) == 0);
    }
    Py_XDECREF(result);
    Py_XDECREF(more);
    Py_XDECREF(record);
    return ok;
}

/* What an accepted transfer yields: its CommandResult, its event (position, type, body) and
 * its CommandRecord, all new references. */
typedef struct {
    PyObject *result, *event, *record;
} Accepted;

/* One command: 1 if it was an accepted transfer, decided, sealed and applied (``out`` holds
 * what it yields); 0 if it is not this path's, with nothing changed; -1 on an error. */
static int
transfer_core(PyObject *processor, PyObject *raw, Accepted *out)
{
    Transfer t;
    memset(&t, 0, sizeof t);
    if (!read_command(raw, &t)) {
        release(&t);
        return PyErr_Occurred() ? -1 : 0;
    }
    int status = -1;
    PyObject *state = NULL, *known = NULL, *ledger = NULL, *head = NULL;
    PyObject *from_account = NULL, *to_account = NULL, *from_key = NULL, *to_key = NULL;
    PyObject *asset = NULL, *position_obj = NULL, *stamp = NULL;
    PyObject *command_digest = NULL, *digest = NULL, *body = NULL, *balances = NULL;
    PyObject *recent = NULL, *res = NULL, *result_json = NULL, *record = NULL;
    PyObject *known_entry = NULL, *event = NULL, *units_obj = NULL, *minus_units = NULL;
    PyObject *system_clock = NULL;

    if ((state = PyObject_GetAttr(processor, n_state)) == NULL ||
        (known = PyObject_GetAttr(processor, n_known)) == NULL ||
        (ledger = PyObject_GetAttr(processor, n_ledger)) == NULL) {
        goto fail;
    }
    /* A key seen before is answered from its record (or refused): the Python path. */
    int seen = PySequence_Contains(known, t.key_obj);
    Py_ssize_t known_len = seen == 0 ? PyObject_Length(known) : 0;
    if (seen != 0 || known_len < 0 || known_len >= g_known_max) {
        goto none_or_fail;
    }
    const char *ledger_text;
    Py_ssize_t ledger_len;
    if (!plain_text(ledger, &ledger_text, &ledger_len)) {
        goto none;
    }
    asset = PyUnicode_FromStringAndSize(t.asset, t.asset_len);
    from_account = account_name(&t, t.from, t.from_len);
    to_account = account_name(&t, t.to, t.to_len);
    if (asset == NULL || from_account == NULL || to_account == NULL) {
        goto fail;
    }
    from_key = PyTuple_Pack(2, from_account, asset);
    to_key = PyTuple_Pack(2, to_account, asset);
    if (from_key == NULL || to_key == NULL) {
        goto fail;
    }
    if (!decide(state, &t, from_key)) {
        goto none_or_fail;
    }
    head = PyObject_GetAttr(state, n_head_hash);
    position_obj = PyObject_GetAttr(state, n_position);
    if (head == NULL || position_obj == NULL) {
        goto fail;
    }
    const char *prev;
    Py_ssize_t prev_len;
    long long position = PyLong_AsLongLong(position_obj);
    if (position == -1 && PyErr_Occurred()) {
        PyErr_Clear(); /* beyond 64 bits: the Python path */
        goto none;
    }
    /* A head hash is 64 hex digits; a ledger name of at most 200 plain characters keeps the
     * body well inside MAX_BODY (ids are at most 64, the key 200, amounts 39 characters). */
    if (!plain_text(head, &prev, &prev_len) || prev_len != 64 || ledger_len > 200 ||
        position < 0 || position > (1LL << 62)) {
        goto none;
    }
    position += 1;
    system_clock = PyObject_GetAttr(processor, n_system_clock);
    if (system_clock == NULL) {
        goto fail;
    }
    int own_clock = PyObject_IsTrue(system_clock);
    if (own_clock < 0) {
        goto fail;
    }
    if (own_clock) {
        int utc = last_time_in_utc(processor);
        if (utc <= 0) {
            goto none_or_fail; /* a last reading not in UTC: the Python path compares it */
        }
    }

    /* Everything that can refuse has been checked: from here on, the command is accepted. */
    char iso[64];
    Py_ssize_t iso_len;
    stamp = own_clock ? system_now(processor, iso, &iso_len)
                      : processor_now(processor, iso, &iso_len);
    if (stamp == NULL) {
        goto fail;
    }
    if (own_clock && PyObject_SetAttr(processor, n_last_time, stamp) < 0) {
        goto fail;
    }

    /* The command hash: pydantic's JSON of the model, fields in the model's order. */
    char text[MAX_BODY];
    Buffer b = {text, text + MAX_BODY};
    int ok = PUT(&b, "{\"key\":") && put_str(&b, t.key, t.key_len) &&
             PUT(&b, ",\"type\":\"transfer\",\"client\":") &&
             put_str(&b, t.client, t.client_len) && PUT(&b, ",\"from_sub_account\":") &&
             put_str(&b, t.from, t.from_len) && PUT(&b, ",\"to_sub_account\":") &&
             put_str(&b, t.to, t.to_len) && PUT(&b, ",\"asset\":") &&
             put_str(&b, t.asset, t.asset_len) && PUT(&b, ",\"amount\":") &&
             put_str(&b, t.amount, t.amount_len) && PUT(&b, "}");
    if (!ok) {
        PyErr_SetString(PyExc_ValueError, "_fastpath: command too long");
        goto fail;
    }
    command_digest = sha256_hex(text, b.p - text);
    if (command_digest == NULL) {
        goto fail;
    }

    /* The sealed body: journal.seal's canonical JSON (sorted keys), then its hash. */
    b.p = text;
    ok = PUT(&b, "{\"data\":{\"amount\":\"") && put_amount(&b, t.units, t.scale, 0) &&
         PUT(&b, "\",\"asset\":") && put_str(&b, t.asset, t.asset_len) &&
         PUT(&b, ",\"client\":") && put_str(&b, t.client, t.client_len) &&
         PUT(&b, ",\"from_sub_account\":") && put_str(&b, t.from, t.from_len) &&
         PUT(&b, ",\"to_sub_account\":") && put_str(&b, t.to, t.to_len) &&
         PUT(&b, ",\"units\":\"") && put_units(&b, t.units, 0) && PUT(&b, "\"},\"key\":") &&
         put_str(&b, t.key, t.key_len) && PUT(&b, ",\"ledger\":") &&
         put_str(&b, ledger_text, ledger_len) && PUT(&b, ",\"position\":") &&
         put_int(&b, position) && PUT(&b, ",\"postings\":[{\"account\":\"client:") &&
         put(&b, t.client, t.client_len) && PUT(&b, ":") && put(&b, t.from, t.from_len) &&
         PUT(&b, ":available\",\"amount\":\"") && put_amount(&b, t.units, t.scale, 0) &&
         PUT(&b, "\",\"asset\":") && put_str(&b, t.asset, t.asset_len) &&
         PUT(&b, ",\"units\":\"") && put_units(&b, t.units, 0) &&
         PUT(&b, "\"},{\"account\":\"client:") && put(&b, t.client, t.client_len) &&
         PUT(&b, ":") && put(&b, t.to, t.to_len) && PUT(&b, ":available\",\"amount\":\"") &&
         put_amount(&b, t.units, t.scale, 1) && PUT(&b, "\",\"asset\":") &&
         put_str(&b, t.asset, t.asset_len) && PUT(&b, ",\"units\":\"") &&
         put_units(&b, t.units, 1) && PUT(&b, "\"}],\"prev\":") && put_str(&b, prev, prev_len) &&
         PUT(&b, ",\"time\":") && put_str(&b, iso, iso_len) &&
         PUT(&b, ",\"type\":\"transferred\",\"v\":1}");
    if (!ok) {
        PyErr_SetString(PyExc_ValueError, "_fastpath: event too long");
        goto fail;
    }
    digest = sha256_hex(text, b.p - text);
    if (digest == NULL) {
        goto fail;
    }
    b.p -= 1; /* the closing brace: the hash goes last */
    ok = PyUnicode_IS_ASCII(digest) && PyUnicode_GET_LENGTH(digest) == 64 &&
         PUT(&b, ",\"hash\":\"") && put(&b, PyUnicode_DATA(digest), 64) && PUT(&b, "\"}");
    if (!ok) {
        PyErr_SetString(PyExc_ValueError, "_fastpath: event too long");
        goto fail;
    }
    body = PyBytes_FromStringAndSize(text, b.p - text);
    if (body == NULL) {
        goto fail;
    }

    /* Apply: the two balances, the position and the head (LedgerState.apply). */
    if ((balances = PyObject_GetAttr(state, n_balances)) == NULL ||
        (units_obj = units_object(t.units)) == NULL ||
        (minus_units = units_object(-t.units)) == NULL ||
        add_balance(balances, from_key, units_obj) < 0 ||
        add_balance(balances, to_key, minus_units) < 0) {
        goto fail;
    }
    Py_SETREF(position_obj, PyLong_FromLongLong(position));
    if (position_obj == NULL || PyObject_SetAttr(state, n_position, position_obj) < 0 ||
        PyObject_SetAttr(state, n_head_hash, digest) < 0) {
        goto fail;
    }
    /* Processor._keep: recent bodies for reversals. */
    recent = PyObject_GetAttr(processor, n_recent);
    if (recent == NULL || PyObject_SetItem(recent, position_obj, body) < 0) {
        goto fail;
    }
    PyObject *old = PyLong_FromLongLong(position - g_recent);
    if (old == NULL) {
        goto fail;
    }
    if (PyDict_CheckExact(recent)) { /* recent.pop(old, None) */
        int status = PyDict_Contains(recent, old);
        if (status > 0) {
            status = PyDict_DelItem(recent, old);
        }
        Py_DECREF(old);
        if (status < 0) {
            goto fail;
        }
    }
    else {
        PyObject *popped = PyObject_CallMethod(recent, "pop", "OO", old, Py_None);
        Py_DECREF(old);
        if (popped == NULL) {
            goto fail;
        }
        Py_DECREF(popped);
    }

    /* The result, its JSON (CommandResult.to_json), the record and the Outcome. */
    PyObject *positions = PyTuple_Pack(1, position_obj);
    PyObject *types = PyTuple_Pack(1, s_transferred);
    if (positions == NULL || types == NULL) {
        Py_XDECREF(positions);
        Py_XDECREF(types);
        goto fail;
    }
    PyObject *result_args[4] = {t.key_obj, s_accepted, positions, types};
    res = PyObject_Vectorcall(g_result, result_args, 4, NULL);
    Py_DECREF(positions);
    Py_DECREF(types);
    if (res == NULL) {
        goto fail;
    }
    b.p = text;
    ok = PUT(&b, "{\"key\":") && put_str(&b, t.key, t.key_len) &&
         PUT(&b, ",\"status\":\"accepted\",\"positions\":[") && put_int(&b, position) &&
         PUT(&b, "],\"event_types\":[\"transferred\"]}");
    if (!ok) {
        PyErr_SetString(PyExc_ValueError, "_fastpath: result too long");
        goto fail;
    }
    result_json = PyBytes_FromStringAndSize(text, b.p - text);
    if (result_json == NULL) {
        goto fail;
    }
    PyObject *record_args[3] = {t.key_obj, command_digest, result_json};
    if ((record = PyObject_Vectorcall(g_record, record_args, 3, NULL)) == NULL ||
        (known_entry = PyTuple_Pack(2, command_digest, result_json)) == NULL ||
        (event = PyTuple_Pack(3, position_obj, s_transferred, body)) == NULL) {
        goto fail;
    }
    if (PyObject_SetItem(known, t.key_obj, known_entry) < 0) {
        goto fail;
    }
    out->result = res;
    out->event = event;
    out->record = record;
    res = event = record = NULL; /* handed to the caller */
    status = 1;
    goto done;

none_or_fail:
    if (PyErr_Occurred()) {
        goto fail;
    }
none:
    status = 0;
    goto done;
fail:
    status = -1;
done:
    Py_XDECREF(state);
    Py_XDECREF(known);
    Py_XDECREF(ledger);
    Py_XDECREF(head);
    Py_XDECREF(from_account);
    Py_XDECREF(to_account);
    Py_XDECREF(from_key);
    Py_XDECREF(to_key);
    Py_XDECREF(asset);
    Py_XDECREF(position_obj);
    Py_XDECREF(stamp);
    Py_XDECREF(command_digest);
    Py_XDECREF(digest);
    Py_XDECREF(body);
    Py_XDECREF(balances);
    Py_XDECREF(recent);
    Py_XDECREF(res);
    Py_XDECREF(result_json);
    Py_XDECREF(record);
    Py_XDECREF(known_entry);
    Py_XDECREF(event);
    Py_XDECREF(units_obj);
    Py_XDECREF(minus_units);
    Py_XDECREF(system_clock);
    release(&t);
    return status;
}

static PyObject *
native_transfer(PyObject *module, PyObject *const *args, Py_ssize_t nargs)
{
    if (nargs != 2) {
        PyErr_SetString(PyExc_TypeError, "transfer(processor, raw)");
        return NULL;
    }
    if (g_outcome == NULL) {
        PyErr_SetString(PyExc_RuntimeError, "ledger._fastpath: configure() was not called");
        return NULL;
    }
    Accepted a;
    int status = transfer_core(args[0], args[1], &a);
    if (status <= 0) {
        return status < 0 ? NULL : Py_NewRef(Py_None);
    }
    PyObject *events = PyList_New(1);
    PyObject *outcome = NULL;
    if (events != NULL) {
        PyList_SET_ITEM(events, 0, Py_NewRef(a.event));
        PyObject *outcome_args[3] = {a.result, events, a.record};
        outcome = PyObject_Vectorcall(g_outcome, outcome_args, 3, NULL);
        Py_DECREF(events);
    }
    Py_DECREF(a.result);
    Py_DECREF(a.event);
    Py_DECREF(a.record);
    return outcome;
}

/* Processor.process_all: every command in order, accepted transfers here and the rest by
 * ``processor._process`` (the Python path), appending as ``process_all`` documents. */
static PyObject *
native_process_all(PyObject *module, PyObject *const *args, Py_ssize_t nargs)
{
    if (nargs != 5 || !PyList_CheckExact(args[2]) || !PyList_CheckExact(args[3]) ||
        !PyList_CheckExact(args[4])) {
        PyErr_SetString(PyExc_TypeError,
                        "process_all(processor, commands, results: list, events: list, "
                        "records: list)");
        return NULL;
    }
    if (g_outcome == NULL) {
        PyErr_SetString(PyExc_RuntimeError, "ledger._fastpath: configure() was not called");
        return NULL;
    }
    PyObject *processor = args[0], *results = args[2], *events = args[3], *records = args[4];
    PyObject *commands = PySequence_Fast(args[1], "process_all: commands must be a sequence");
    if (commands == NULL) {
        return NULL;
    }
    int ok = 1;
    for (Py_ssize_t i = 0; ok && i < PySequence_Fast_GET_SIZE(commands); i++) {
        PyObject *raw = Py_NewRef(PySequence_Fast_GET_ITEM(commands, i));
        Accepted a;
        int status = PyDict_CheckExact(raw) ? transfer_core(processor, raw, &a) : 0;
        if (status > 0) {
            ok = PyList_Append(results, a.result) == 0 && PyList_Append(events, a.event) == 0 &&
                 PyList_Append(records, a.record) == 0;
            Py_DECREF(a.result);
            Py_DECREF(a.event);
            Py_DECREF(a.record);
        }
        else if (status == 0) {
            ok = append_outcome(PyObject_CallMethodOneArg(processor, n_process, raw), results,
                                events, records);
        }
        else {
            ok = 0;
        }
        Py_DECREF(raw);
        if ((i & 31) == 31) {
            /* Offer the GIL every 32 commands (~0.3 ms): the committer, back from
             * PostgreSQL, then waits ~0.7 ms at most to answer its callers and take the next
             * batch, not up to the 5 ms switch interval (measured in review). */
            Py_BEGIN_ALLOW_THREADS
            Py_END_ALLOW_THREADS
        }
    }
    Py_DECREF(commands);
    return ok ? Py_NewRef(Py_None) : NULL;
}

static PyObject *
native_sha256_direct(PyObject *module, PyObject *unused)
{
    return PyBool_FromLong(f_sha_init != NULL);
}

static PyObject *
native_configure(PyObject *module, PyObject *args)
{
    PyObject *scales, *result, *record, *outcome, *sha256, *utc, *max_units;
    long long recent;
    Py_ssize_t known_max;
    if (!PyArg_ParseTuple(args, "O!OOOOOLnO!:configure", &PyDict_Type, &scales, &result, &record,
                          &outcome, &sha256, &utc, &recent, &known_max, &PyLong_Type,
                          &max_units)) {
        return NULL;
    }
    PyObject *text = PyObject_Str(max_units);
    if (text == NULL) {
        return NULL;
    }
    const char *digits = PyUnicode_AsUTF8(text);
    __int128 value = 0;
    for (const char *p = digits; p != NULL && *p; p++) {
        if (*p < '0' || *p > '9' || value > ((__int128)1 << 120)) {
            Py_DECREF(text);
            PyErr_SetString(PyExc_ValueError, "configure: max_units out of range");
            return NULL;
        }
        value = value * 10 + (*p - '0');
    }
    Py_DECREF(text);
    g_max_units = value;
    Py_XSETREF(g_scales, Py_NewRef(scales));
    Py_XSETREF(g_result, Py_NewRef(result));
    Py_XSETREF(g_record, Py_NewRef(record));
    Py_XSETREF(g_outcome, Py_NewRef(outcome));
    Py_XSETREF(g_sha256, Py_NewRef(sha256));
    Py_XSETREF(g_utc, Py_NewRef(utc));
    g_recent = recent;
    g_known_max = known_max;
    load_sha256();
    Py_RETURN_NONE;
}

static PyMethodDef methods[] = {

    {"configure", native_configure, METH_VARARGS,
     "configure(scales, CommandResult, CommandRecord, Outcome, sha256, UTC, recent_entries, "
     "known_keys, max_units)"},
    {"transfer", (PyCFunction)(void (*)(void))native_transfer, METH_FASTCALL,
     "transfer(processor, raw) -> Outcome | None: an accepted transfer decided, sealed and "
     "applied exactly as Processor.process does, or None (Python then decides)."},
    {"sha256_direct", native_sha256_direct, METH_NOARGS,
     "sha256_direct() -> bool: whether SHA-256 goes straight to libcrypto (else hashlib)."},
    {"process_all", (PyCFunction)(void (*)(void))native_process_all, METH_FASTCALL,
     "process_all(processor, commands, results, events, records): Processor.process_all, "
     "with accepted transfers decided here and the rest by processor._process."},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module_def = {
    PyModuleDef_HEAD_INIT, "ledger._fastpath",
    "The writer's fast path for accepted transfers, in C (see ledger/processing.py).", -1, methods,
    NULL, NULL, NULL, NULL,
};

PyMODINIT_FUNC
PyInit__fastpath(void)
{
    PyDateTime_IMPORT;
    if (PyDateTimeAPI == NULL) {
        return NULL;
    }
    s_transfer = PyUnicode_InternFromString("transfer");
    s_transferred = PyUnicode_InternFromString("transferred");
    s_accepted = PyUnicode_InternFromString("accepted");
    s_subs = PyUnicode_InternFromString("subs");
    s_hexdigest = PyUnicode_InternFromString("hexdigest");
    if (s_transfer == NULL || s_transferred == NULL || s_accepted == NULL || s_subs == NULL ||
        s_hexdigest == NULL) {
        return NULL;
    }
    static const char *const attrs[] = {"state",    "known",         "ledger",     "clients",
                                        "balances", "head_hash",     "position",
                                        "_system_clock", "_last_time", "recent",
                                        "_process", "result", "events", "record", "replayed"};
    PyObject **slots[] = {&n_state,    &n_known,     &n_ledger,       &n_clients,
                          &n_balances, &n_head_hash, &n_position,     &n_system_clock,
                          &n_last_time, &n_recent,   &n_process,      &n_result,
                          &n_events,   &n_record,    &n_replayed};
    for (size_t i = 0; i < sizeof attrs / sizeof attrs[0]; i++) {
        if ((*slots[i] = PyUnicode_InternFromString(attrs[i])) == NULL) {
            return NULL;
        }
    }
    static const char *const fields[7] = {"type", "key", "client", "from_sub_account",
                                          "to_sub_account", "asset", "amount"};
    for (int i = 0; i < 7; i++) {
        if ((n_fields[i] = PyUnicode_InternFromString(fields[i])) == NULL) {
            return NULL;
        }
    }
    return PyModule_Create(&module_def);
}
