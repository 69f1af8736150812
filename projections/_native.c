/*
 * projections._native: the decoder's fast path, for bodies exactly as the writer makes them.
 *
 * Why C: a rebuild decodes every event of the log, and in Python the checks that keep the
 * fast path identical to the generic one cost more than the parse itself (about 32k
 * instructions per event, against a few thousand here). See projections/decode.py.
 *
 * The contract is narrow on purpose. ``decode(body)`` returns the same ``Event`` that
 * ``projections.decode`` builds, or ``None`` for anything that is not byte for byte in the
 * writer's canonical form: keys in the writer's order, no whitespace, no escapes, ASCII only,
 * integers in canonical form. ``None`` is not a verdict: the Python paths then decide, and
 * they alone say why a body is refused. So this code never has to explain an error, and any
 * doubt is resolved by returning ``None``.
 *
 * The caches (ledgers seen, accounts classified) and the known types and assets are the
 * Python module's own objects, handed over once by ``configure``.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <stdint.h>
#include <string.h>

#define MAX_DEPTH 64     /* nesting inside ``data`` beyond which the Python path decides */
#define MAX_POSTINGS 64  /* more postings than this: the Python path decides */
#define MAX_DIGITS 36    /* units longer than this: the Python path decides (fits in int128) */

/* A sum of MAX_POSTINGS units of MAX_DIGITS digits each must fit in a signed 128-bit integer
 * (2^127 is about 1.7e38): 64 * 10^36 = 6.4e37. */
_Static_assert(MAX_POSTINGS <= 170 && MAX_DIGITS <= 36, "a posting sum could overflow int128");

static PyObject *g_ledgers;   /* set of ledger names seen (decode._LEDGERS) */
static PyObject *g_accounts;  /* dict account -> AccountInfo (decode._ACCOUNTS) */
static PyObject *g_types;     /* dict event type -> the same str (decode.KNOWN_TYPES) */
static PyObject *g_assets;    /* dict asset code -> the same str (ledger.money.ASSETS) */
static PyObject *g_event;     /* decode.Event, a tuple subclass */
static PyObject *g_data;      /* decode._Data: lazy mapping built from the JSON text */

/* The last ledger name seen, to skip the set lookup for the usual page of one ledger. */
static PyObject *g_last_ledger;

typedef struct {
    const char *p;
    const char *end;
} Cursor;

/* Match a literal and move past it. */
static int
take(Cursor *c, const char *lit, Py_ssize_t n)
{
    if (c->end - c->p < n || memcmp(c->p, lit, (size_t)n) != 0) {
        return 0;
    }
    c->p += n;
    return 1;
}

#define TAKE(c, lit) take((c), (lit), (Py_ssize_t)(sizeof(lit) - 1))

/* Bytes of a word that are zero: the classic bit trick, exact for the lowest flagged byte. */
#define ONES 0x0101010101010101ULL
#define HIGHS 0x8080808080808080ULL
#define ZERO_BYTES(w) (((w) - ONES) & ~(w) & HIGHS)

/* A string with no escapes and no control characters: its text between the quotes. */
static int
plain_string(Cursor *c, const char **start, Py_ssize_t *len)
{
    const char *p = c->p;
    if (p >= c->end || *p != '"') {
        return 0;
    }
    p++;
    const char *s = p;
    /* Eight bytes at a time while none is a quote, a backslash or a control character (the
     * body is ASCII, checked first, so "below 0x20" is "zero after subtracting 0x20"). */
    while (c->end - p >= 8) {
        uint64_t w;
        memcpy(&w, p, 8);
        uint64_t stop = ZERO_BYTES(w ^ (ONES * '"')) | ZERO_BYTES(w ^ (ONES * '\\')) |
                        ((w - ONES * 0x20) & ~w & HIGHS);
        if (stop != 0) {
            break;
        }
        p += 8;
    }
    while (p < c->end) {
        unsigned char ch = (unsigned char)*p;
        if (ch == '"') {
            *start = s;
            *len = p - s;
            c->p = p + 1;
            return 1;
        }
        if (ch == '\\' || ch < 0x20) {
            return 0;
        }
        p++;
    }
    return 0;
}

static int
digits(Cursor *c)
{
    const char *s = c->p;
    while (c->p < c->end && *c->p >= '0' && *c->p <= '9') {
        c->p++;
    }
    return c->p > s;
}

/* A JSON number: -?(0|[1-9][0-9]*)(.[0-9]+)?([eE][+-]?[0-9]+)? */
static int
number(Cursor *c)
{
    if (c->p < c->end && *c->p == '-') {
        c->p++;
    }
    if (c->p >= c->end) {
        return 0;
    }
    if (*c->p == '0') {
        c->p++;
    }
    else if (!digits(c)) {
        return 0;
    }
    if (c->p < c->end && *c->p == '.') {
        c->p++;
        if (!digits(c)) {
            return 0;
        }
    }
    if (c->p < c->end && (*c->p == 'e' || *c->p == 'E')) {
        c->p++;
        if (c->p < c->end && (*c->p == '+' || *c->p == '-')) {
            c->p++;
        }
        if (!digits(c)) {
            return 0;
        }
    }
    return 1;
}

static int value(Cursor *c, int depth);

/* An object or array whose members are separated by commas, without whitespace. */
static int
members(Cursor *c, int depth, char close, int keyed)
{
    c->p++; /* the opening bracket */
    if (c->p < c->end && *c->p == close) {
        c->p++;
        return 1;
    }
    for (;;) {
        if (keyed) {
            const char *s;
            Py_ssize_t n;
            if (!plain_string(c, &s, &n) || !TAKE(c, ":")) {
                return 0;
            }
        }
        if (!value(c, depth + 1)) {
            return 0;
        }
        if (c->p >= c->end) {
            return 0;
        }
        if (*c->p == ',') {
            c->p++;
            continue;
        }
        if (*c->p == close) {
            c->p++;
            return 1;
        }
        return 0;
    }
}

/* Any JSON value in compact form, syntax only (what ``data`` holds). */
static int
value(Cursor *c, int depth)
{
    if (c->p >= c->end || depth > MAX_DEPTH) {
        return 0;
    }
    const char *s;
    Py_ssize_t n;
    switch (*c->p) {
    case '{':
        return members(c, depth, '}', 1);
    case '[':
        return members(c, depth, ']', 0);
    case '"':
        return plain_string(c, &s, &n);
    case 't':
        return TAKE(c, "true");
    case 'f':
        return TAKE(c, "false");
    case 'n':
        return TAKE(c, "null");
    default:
        return number(c);
    }
}

/* Units in canonical form and not zero: -?[1-9][0-9]*, at most MAX_DIGITS digits. */
static int
canonical_units(const char *s, Py_ssize_t n)
{
    Py_ssize_t i = (n > 0 && s[0] == '-') ? 1 : 0;
    if (n - i < 1 || n - i > MAX_DIGITS || s[i] < '1' || s[i] > '9') {
        return 0;
    }
    for (Py_ssize_t k = i + 1; k < n; k++) {
        if (s[k] < '0' || s[k] > '9') {
            return 0;
        }
    }
    return 1;
}

static __int128
units_value(const char *s, Py_ssize_t n)
{
    int negative = s[0] == '-';
    __int128 v = 0;
    for (Py_ssize_t k = negative; k < n; k++) {
        v = v * 10 + (s[k] - '0');
    }
    return negative ? -v : v;
}

static PyObject *
units_object(const char *s, Py_ssize_t n)
{
    if (n <= 18) {
        return PyLong_FromLongLong((long long)units_value(s, n));
    }
    char buf[MAX_DIGITS + 2];
    memcpy(buf, s, (size_t)n);
    buf[n] = '\0';
    return PyLong_FromString(buf, NULL, 10);
}

/* ASCII text as a str without UTF-8 decoding (the caller checked the body is ASCII). */
static PyObject *
ascii_str(const char *s, Py_ssize_t n)
{
    PyObject *out = PyUnicode_New(n, 127);
    if (out != NULL) {
        memcpy(PyUnicode_DATA(out), s, (size_t)n);
    }
    return out;
}

/* The canonical object for a key of ``table``, a new reference; NULL with no error if absent. */
static PyObject *
canonical(PyObject *table, const char *s, Py_ssize_t n)
{
    PyObject *key = ascii_str(s, n);
    if (key == NULL) {
        return NULL;
    }
    PyObject *found = PyDict_GetItemWithError(table, key);
    Py_DECREF(key);
    Py_XINCREF(found);
    return found;
}

static int
is_ascii(const char *s, Py_ssize_t n)
{
    Py_ssize_t i = 0;
    uint64_t acc = 0;
    for (; i + 8 <= n; i += 8) {
        uint64_t w;
        memcpy(&w, s + i, 8);
        acc |= w;
    }
    for (; i < n; i++) {
        acc |= (unsigned char)s[i];
    }
    return (acc & 0x8080808080808080ULL) == 0;
}

typedef struct {
    const char *account, *asset, *units;
    Py_ssize_t account_len, asset_len, units_len;
} RawPosting;

/* One posting: {"account":"..","amount":"..","asset":"..","units":".."} */
static int
posting(Cursor *c, RawPosting *out)
{
    const char *amount;
    Py_ssize_t amount_len;
    return TAKE(c, "{\"account\":") && plain_string(c, &out->account, &out->account_len) &&
           TAKE(c, ",\"amount\":") && plain_string(c, &amount, &amount_len) &&
           TAKE(c, ",\"asset\":") && plain_string(c, &out->asset, &out->asset_len) &&
           TAKE(c, ",\"units\":") && plain_string(c, &out->units, &out->units_len) &&
           TAKE(c, "}") && canonical_units(out->units, out->units_len);
}

static int
same_text(const char *a, Py_ssize_t an, const char *b, Py_ssize_t bn)
{
    return an == bn && memcmp(a, b, (size_t)an) == 0;
}

/* Registered assets and a zero sum per asset (canonical units are never zero). */
static int
balanced(const RawPosting *raw, Py_ssize_t count, PyObject **assets)
{
    if (count == 2) {
        /* Canonical texts sum to zero exactly when one is the other with a minus sign. */
        const RawPosting *a = &raw[0], *b = &raw[1];
        if (a->units[0] == '-') {
            const RawPosting *t = a;
            a = b;
            b = t;
        }
        return assets[0] == assets[1] && b->units[0] == '-' &&
               same_text(a->units, a->units_len, b->units + 1, b->units_len - 1);
    }
    for (Py_ssize_t i = 0; i < count; i++) {
        if (assets[i] == NULL) {
            return 0;
        }
    }
    for (Py_ssize_t i = 0; i < count; i++) {
        int first = 1;
        for (Py_ssize_t k = 0; k < i; k++) {
            first &= assets[k] != assets[i];
        }
        if (!first) {
            continue; /* summed with the first posting in this asset */
        }
        __int128 sum = 0;
        for (Py_ssize_t k = i; k < count; k++) {
            if (assets[k] == assets[i]) {
                sum += units_value(raw[k].units, raw[k].units_len);
            }
        }
        if (sum != 0) {
            return 0;
        }
    }
    return 1;
}

/* Build the postings tuple; NULL with no error when an account is not yet classified. */
static PyObject *
postings_tuple(const RawPosting *raw, Py_ssize_t count, PyObject **assets)
{
    PyObject *out = PyTuple_New(count);
    if (out == NULL) {
        return NULL;
    }
    for (Py_ssize_t i = 0; i < count; i++) {
        PyObject *account = ascii_str(raw[i].account, raw[i].account_len);
        if (account == NULL) {
            Py_DECREF(out);
            return NULL;
        }
        /* Owned at once: an allocation below may run a collection, and its finalizers
         * Python code that could clear the cache and free a borrowed value. */
        PyObject *info = Py_XNewRef(PyDict_GetItemWithError(g_accounts, account));
        if (info == NULL) {
            Py_DECREF(account);
            Py_DECREF(out);
            return NULL;
        }
        PyObject *units = units_object(raw[i].units, raw[i].units_len);
        if (units == NULL) {
            Py_DECREF(account);
            Py_DECREF(info);
            Py_DECREF(out);
            return NULL;
        }
        PyObject *item = PyTuple_New(4);
        if (item == NULL) {
            Py_DECREF(account);
            Py_DECREF(info);
            Py_DECREF(units);
            Py_DECREF(out);
            return NULL;
        }
        Py_INCREF(assets[i]);
        PyTuple_SET_ITEM(item, 0, account);
        PyTuple_SET_ITEM(item, 1, assets[i]);
        PyTuple_SET_ITEM(item, 2, units);
        PyTuple_SET_ITEM(item, 3, info);
        PyTuple_SET_ITEM(out, i, item);
    }
    return out;
}

static PyObject *
known_ledger(const char *s, Py_ssize_t n)
{
    PyObject *last = g_last_ledger;
    if (last != NULL && PyUnicode_GET_LENGTH(last) == n &&
        memcmp(PyUnicode_DATA(last), s, (size_t)n) == 0) {
        /* Still in the set? The Python side clears it when it grows too large. */
        int found = PySet_Contains(g_ledgers, last);
        if (found < 0) {
            return NULL;
        }
        if (found) {
            Py_INCREF(last);
            return last;
        }
        return Py_NewRef(Py_None);
    }
    PyObject *name = ascii_str(s, n);
    if (name == NULL) {
        return NULL;
    }
    int found = PySet_Contains(g_ledgers, name);
    if (found <= 0) {
        Py_DECREF(name);
        return found < 0 ? NULL : Py_NewRef(Py_None);
    }
    Py_XSETREF(g_last_ledger, Py_NewRef(name));
    return name;
}

/* Everything after the parse: look names up and build the Event, or None. */
typedef struct {
    const char *data, *ledger, *time, *type;
    Py_ssize_t data_len, ledger_len, time_len, type_len;
    long long position;
    RawPosting postings[MAX_POSTINGS];
    Py_ssize_t count;
} Parsed;

static PyObject *
build(const Parsed *b)
{
    PyObject *assets[MAX_POSTINGS] = {0};
    PyObject *result = NULL, *kind = NULL, *ledger = NULL, *postings = NULL;
    PyObject *position = NULL, *time = NULL, *data_text = NULL, *data = NULL;

    for (Py_ssize_t i = 0; i < b->count; i++) {
        assets[i] = canonical(g_assets, b->postings[i].asset, b->postings[i].asset_len);
        if (assets[i] == NULL) {
            goto done; /* unknown asset (or an error, which propagates) */
        }
    }
    if (!balanced(b->postings, b->count, assets)) {
        result = Py_NewRef(Py_None);
        goto done;
    }
    kind = canonical(g_types, b->type, b->type_len);
    if (kind == NULL) {
        goto done;
    }
    ledger = known_ledger(b->ledger, b->ledger_len);
    if (ledger == NULL || ledger == Py_None) {
        goto done;
    }
    postings = postings_tuple(b->postings, b->count, assets);
    if (postings == NULL) {
        goto done;
    }
    position = PyLong_FromLongLong(b->position);
    time = ascii_str(b->time, b->time_len);
    data_text = PyBytes_FromStringAndSize(b->data, b->data_len);
    if (position == NULL || time == NULL || data_text == NULL) {
        goto done;
    }
    data = PyObject_CallOneArg(g_data, data_text);
    if (data == NULL) {
        goto done;
    }
    PyTypeObject *type = (PyTypeObject *)g_event;
    PyObject *event = type->tp_alloc(type, 6);
    if (event == NULL) {
        goto done;
    }
    PyObject *items[6] = {ledger, position, kind, time, data, postings};
    for (int i = 0; i < 6; i++) {
        PyTuple_SET_ITEM(event, i, Py_NewRef(items[i]));
    }
    result = event;
done:
    for (Py_ssize_t i = 0; i < b->count; i++) {
        Py_XDECREF(assets[i]);
    }
    Py_XDECREF(kind);
    Py_XDECREF(ledger);
    Py_XDECREF(postings);
    Py_XDECREF(position);
    Py_XDECREF(time);
    Py_XDECREF(data_text);
    Py_XDECREF(data);
    if (result == NULL && !PyErr_Occurred()) {
        result = Py_NewRef(Py_None); /* a name not known yet: the Python path decides */
    }
    return result;
}

/* position: 1 .. 10^18-1 in canonical form (longer ones go the Python way). */
static int
position_value(Cursor *c, long long *out)
{
    const char *s = c->p;
    if (s >= c->end || *s < '1' || *s > '9' || !digits(c) || c->p - s > 18) {
        return 0;
    }
    *out = (long long)units_value(s, c->p - s);
    return 1;
}

/* Two ASCII digits as a number, or -1. */
static int
two_digits(const char *s)
{
    if (s[0] < '0' || s[0] > '9' || s[1] < '0' || s[1] > '9') {
        return -1;
    }
    return (s[0] - '0') * 10 + (s[1] - '0');
}

static int
days_in_month(int year, int month)
{
    static const int days[12] = {31, 28, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31};
    int leap = (year % 4 == 0 && year % 100 != 0) || year % 400 == 0;
    return month == 2 && leap ? 29 : days[month - 1];
}

/* time: the writer's form only, YYYY-MM-DDTHH:MM:SS[.ffffff]+HH:MM (isoformat of an aware
 * datetime), with every field in range: a subset of what the Python paths accept (``_is_time``),
 * which decide anything else (a "Z", another number of decimals...). */
static int
valid_time(const char *s, Py_ssize_t n)
{
    if (n != 25 && n != 32) {
        return 0;
    }
    if (s[4] != '-' || s[7] != '-' || s[10] != 'T' || s[13] != ':' || s[16] != ':') {
        return 0;
    }
    if (n == 32) {
        if (s[19] != '.') {
            return 0;
        }
        for (int i = 20; i < 26; i++) {
            if (s[i] < '0' || s[i] > '9') {
                return 0;
            }
        }
    }
    const char *offset = s + n - 6;
    if ((offset[0] != '+' && offset[0] != '-') || offset[3] != ':') {
        return 0;
    }
    int century = two_digits(s), year = two_digits(s + 2), month = two_digits(s + 5);
    int day = two_digits(s + 8), hour = two_digits(s + 11), minute = two_digits(s + 14);
    int second = two_digits(s + 17), off_hour = two_digits(offset + 1);
    int off_minute = two_digits(offset + 4);
    if (century < 0 || year < 0 || month < 1 || month > 12 || day < 1 || hour < 0 ||
        hour > 23 || minute < 0 || minute > 59 || second < 0 || second > 59 || off_hour < 0 ||
        off_hour > 23 || off_minute < 0 || off_minute > 59) {
        return 0;
    }
    year += century * 100;
    return year >= 1 && day <= days_in_month(year, month);
}

static int
parse(Cursor *c, Parsed *b)
{
    const char *key, *prev, *hash;
    Py_ssize_t key_len, prev_len, hash_len;
    if (!TAKE(c, "{\"data\":") || c->p >= c->end || *c->p != '{') {
        return 0;
    }
    b->data = c->p;
    if (!value(c, 0)) {
        return 0;
    }
    b->data_len = c->p - b->data;
    if (!TAKE(c, ",\"key\":") || !plain_string(c, &key, &key_len) ||
        !TAKE(c, ",\"ledger\":") || !plain_string(c, &b->ledger, &b->ledger_len) ||
        !TAKE(c, ",\"position\":") || !position_value(c, &b->position) ||
        !TAKE(c, ",\"postings\":["))
    {
        return 0;
    }
    b->count = 0;
    if (!TAKE(c, "]")) {
        for (;;) {
            if (b->count == MAX_POSTINGS || !posting(c, &b->postings[b->count])) {
                return 0;
            }
            b->count++;
            if (TAKE(c, "]")) {
                break;
            }
            if (!TAKE(c, ",")) {
                return 0;
            }
        }
    }
    return TAKE(c, ",\"prev\":") && plain_string(c, &prev, &prev_len) &&
           TAKE(c, ",\"time\":") && plain_string(c, &b->time, &b->time_len) &&
           valid_time(b->time, b->time_len) && TAKE(c, ",\"type\":") &&
           plain_string(c, &b->type, &b->type_len) && TAKE(c, ",\"v\":1,\"hash\":") &&
           plain_string(c, &hash, &hash_len) && TAKE(c, "}") && c->p == c->end;
}

static PyObject *
native_decode(PyObject *module, PyObject *body)
{
    if (g_event == NULL) {
        PyErr_SetString(PyExc_RuntimeError, "projections._native: configure() was not called");
        return NULL;
    }
    if (!PyBytes_CheckExact(body)) {
        Py_RETURN_NONE;
    }
    const char *s = PyBytes_AS_STRING(body);
    Py_ssize_t n = PyBytes_GET_SIZE(body);
    if (!is_ascii(s, n)) {
        Py_RETURN_NONE;
    }
    Parsed parsed;
    Cursor c = {s, s + n};
    if (!parse(&c, &parsed)) {
        Py_RETURN_NONE;
    }
    return build(&parsed);
}

static PyObject *
native_configure(PyObject *module, PyObject *args)
{
    PyObject *ledgers, *accounts, *types, *assets, *event, *data;
    if (!PyArg_ParseTuple(args, "O!O!O!O!O!O:configure", &PySet_Type, &ledgers, &PyDict_Type,
                          &accounts, &PyDict_Type, &types, &PyDict_Type, &assets, &PyType_Type,
                          &event, &data)) {
        return NULL;
    }
    if (!PyType_IsSubtype((PyTypeObject *)event, &PyTuple_Type)) {
        PyErr_SetString(PyExc_TypeError, "configure: event must be a tuple subclass");
        return NULL;
    }
    Py_XSETREF(g_ledgers, Py_NewRef(ledgers));
    Py_XSETREF(g_accounts, Py_NewRef(accounts));
    Py_XSETREF(g_types, Py_NewRef(types));
    Py_XSETREF(g_assets, Py_NewRef(assets));
    Py_XSETREF(g_event, Py_NewRef(event));
    Py_XSETREF(g_data, Py_NewRef(data));
    Py_CLEAR(g_last_ledger);
    Py_RETURN_NONE;
}

/* Batch.sums: per (ledger, account, asset), the sum of the events' posting units.
 * The same loop as the Python one in projections/base.py (and the same insertion order). */
static PyObject *
native_sum_postings(PyObject *module, PyObject *events)
{
    /* A tuple of our own: the items stay alive whatever Python code runs meanwhile (an
     * addition, a key's hash, a collection's finalizers), even if the caller's list changes. */
    PyObject *seq = PySequence_Tuple(events);
    if (seq == NULL) {
        return NULL;
    }
    PyObject *sums = PyDict_New();
    if (sums == NULL) {
        Py_DECREF(seq);
        return NULL;
    }
    Py_ssize_t count = PyTuple_GET_SIZE(seq);
    for (Py_ssize_t i = 0; i < count; i++) {
        PyObject *event = PyTuple_GET_ITEM(seq, i);
        if (!PyTuple_Check(event) || PyTuple_GET_SIZE(event) != 6 ||
            !PyTuple_Check(PyTuple_GET_ITEM(event, 5))) {
            PyErr_SetString(PyExc_TypeError, "sum_postings: expected decoded events");
            goto fail;
        }
        PyObject *ledger = PyTuple_GET_ITEM(event, 0);
        PyObject *postings = PyTuple_GET_ITEM(event, 5);
        for (Py_ssize_t k = 0; k < PyTuple_GET_SIZE(postings); k++) {
            PyObject *item = PyTuple_GET_ITEM(postings, k);
            if (!PyTuple_Check(item) || PyTuple_GET_SIZE(item) < 3) {
                PyErr_SetString(PyExc_TypeError, "sum_postings: expected decoded postings");
                goto fail;
            }
            PyObject *key = PyTuple_Pack(3, ledger, PyTuple_GET_ITEM(item, 0),
                                         PyTuple_GET_ITEM(item, 1));
            if (key == NULL) {
                goto fail;
            }
            PyObject *units = PyTuple_GET_ITEM(item, 2);
            PyObject *before = PyDict_GetItemWithError(sums, key);
            PyObject *total;
            if (before != NULL) {
                total = PyNumber_Add(before, units);
            }
            else if (PyErr_Occurred()) {
                total = NULL;
            }
            else {
                /* get(key, 0) + units */
                PyObject *zero = PyLong_FromLong(0);
                total = zero == NULL ? NULL : PyNumber_Add(zero, units);
                Py_XDECREF(zero);
            }
            int failed = total == NULL || PyDict_SetItem(sums, key, total) < 0;
            Py_DECREF(key);
            Py_XDECREF(total);
            if (failed) {
                goto fail;
            }
        }
    }
    Py_DECREF(seq);
    return sums;
fail:
    Py_DECREF(seq);
    Py_DECREF(sums);
    return NULL;
}

static PyMethodDef methods[] = {
    {"configure", native_configure, METH_VARARGS,
     "configure(ledgers, accounts, types, assets, event, data): the decoder's caches and types."},
    {"decode", native_decode, METH_O,
     "decode(body) -> Event | None: the event of a body in the writer's canonical form, else "
     "None (the Python path then decides)."},
    {"sum_postings", native_sum_postings, METH_O,
     "sum_postings(events) -> dict: per (ledger, account, asset), the summed units."},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module_def = {
    PyModuleDef_HEAD_INIT, "projections._native",
    "The decoder's fast path in C (see projections/decode.py).", -1, methods,
    NULL, NULL, NULL, NULL,
};

PyMODINIT_FUNC
PyInit__native(void)
{
    return PyModule_Create(&module_def);
}
