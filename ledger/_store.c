/*
 * ledger._store: the write side store's hot loops in C (see ledger/store.py).
 *
 * Two things, both held byte for byte to their Python counterparts by tests/test_store_native.py:
 *
 * - ``encode_events`` and ``encode_commands`` frame a batch's rows as one buffer in
 *   PostgreSQL's binary COPY format, as ledger.store's Python encoders do.
 * - ``commit`` runs a batch's whole transaction (BEGIN, the head update that fences a
 *   stale writer, LOCK and NOTIFY, the COPYs, COMMIT) through libpq on a connection psycopg
 *   opened, *without the GIL*. Why: the writer's committer thread shares the GIL with the
 *   decider. Through psycopg, every one of a batch's ~15 waits on the server ended in a wait
 *   for the GIL (up to the switch interval each time), so the commit stage took twice as long
 *   as PostgreSQL needed. Here the thread gives the GIL up once per batch.
 *
 * libpq is not linked: its functions are looked up in the libpq that psycopg already loaded
 * (psycopg documents ``PGconn.pgconn_ptr`` for calling libpq functions it does not wrap). If
 * none is found, ``available()`` is False and ledger/store.py commits through psycopg.
 */
#define _GNU_SOURCE
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <dlfcn.h>
#include <stdint.h>
#include <string.h>
#ifdef __linux__
#include <link.h>
#endif

static PyObject *n_key, *n_command_hash, *n_result;

/* --- binary COPY rows --------------------------------------------------------------- */

static const char COPY_SIGNATURE[19] = "PGCOPY\n\377\r\n\0\0\0\0\0\0\0\0\0";

static char *
put_be32(char *p, uint32_t v)
{
    p[0] = (char)(v >> 24);
    p[1] = (char)(v >> 16);
    p[2] = (char)(v >> 8);
    p[3] = (char)v;
    return p + 4;
}

static char *
put_field(char *p, const char *data, Py_ssize_t n)
{
    p = put_be32(p, (uint32_t)n);
    memcpy(p, data, (size_t)n);
    return p + n;
}

/* A field's bytes: a str as UTF-8 (text columns) or a bytes object as is (bytea), as the
 * Python encoders take them; NULL with TypeError for anything else. */
static const char *
field_bytes(PyObject *value, int text, Py_ssize_t *n, const char *what)
{
    if (text && PyUnicode_Check(value)) {
        return PyUnicode_AsUTF8AndSize(value, n);
    }
    if (!text && PyBytes_Check(value)) {
        *n = PyBytes_GET_SIZE(value);
        return PyBytes_AS_STRING(value);
    }
    PyErr_Format(PyExc_TypeError, "%s must be %s, not %.100s", what, text ? "str" : "bytes",
                 Py_TYPE(value)->tp_name);
    return NULL;
}

/* Rows of ``count`` text/bytea fields after a fixed lead, framed as one COPY buffer.
 * ``field(item, i, f)`` fills field i of an item. Every field is fetched exactly once, into
 * ``fields`` (holding a strong reference to whatever owns the bytes), before anything is
 * written: attribute getters and ``__index__`` may run Python code, which could otherwise
 * mutate the rows or return different values between sizing and writing. The rows themselves
 * are snapshotted into a tuple, so a list mutated meanwhile cannot free an item in use. */
typedef struct {
    PyObject *hold;
    const char *data;
    Py_ssize_t n;
    char int8[8];
} Field;
typedef int (*FieldFn)(PyObject *item, int i, Field *f);

static PyObject *
copy_rows(PyObject *items, const char *lead, Py_ssize_t lead_len, int count, FieldFn field)
{
    PyObject *seq = PySequence_Tuple(items);
    if (seq == NULL) {
        return NULL;
    }
    Py_ssize_t rows = PyTuple_GET_SIZE(seq);
    PyObject *out = NULL;
    Field *fields = NULL;
    Py_ssize_t got = 0;
    if (rows > PY_SSIZE_T_MAX / (Py_ssize_t)sizeof(Field) / count) {
        PyErr_NoMemory();
        goto done;
    }
    fields = PyMem_Calloc((size_t)(rows * count) + 1, sizeof(Field));
    if (fields == NULL) {
        PyErr_NoMemory();
        goto done;
    }
    Py_ssize_t total = (Py_ssize_t)sizeof COPY_SIGNATURE + 2;
    for (Py_ssize_t r = 0; r < rows; r++) {
        if (total > PY_SSIZE_T_MAX - lead_len) {
            goto too_big;
        }
        total += lead_len;
        for (int i = 0; i < count; i++, got++) {
            Field *f = &fields[got];
            if (field(PyTuple_GET_ITEM(seq, r), i, f) < 0) {
                got++; /* release its hold too */
                goto done;
            }
            if (f->n > INT32_MAX) {
                got++;
                PyErr_SetString(PyExc_OverflowError, "a COPY field over 2 GiB");
                goto done;
            }
            if (total > PY_SSIZE_T_MAX - 4 - f->n) {
                got++;
                goto too_big;
            }
            total += 4 + f->n;
        }
    }
    out = PyBytes_FromStringAndSize(NULL, total);
    if (out == NULL) {
        goto done;
    }
    char *p = PyBytes_AS_STRING(out);
    memcpy(p, COPY_SIGNATURE, sizeof COPY_SIGNATURE);
    p += sizeof COPY_SIGNATURE;
    for (Py_ssize_t r = 0, k = 0; r < rows; r++) {
        memcpy(p, lead, (size_t)lead_len);
        p += lead_len;
        for (int i = 0; i < count; i++, k++) {
            p = put_field(p, fields[k].data, fields[k].n);
        }
    }
    p[0] = p[1] = (char)0xff;
    goto done;
too_big:
    PyErr_SetString(PyExc_OverflowError, "COPY rows too large");
done:
    if (fields != NULL) {
        for (Py_ssize_t k = 0; k < got; k++) {
            Py_XDECREF(fields[k].hold);
        }
        PyMem_Free(fields);
    }
    Py_DECREF(seq);
    if (PyErr_Occurred()) {
        Py_CLEAR(out);
    }
    return out;
}

/* (position, type, body): field 0 is the position as int8, then the type and the body. */
static int
event_field(PyObject *item, int i, Field *f)
{
    if (!PyTuple_Check(item) || PyTuple_GET_SIZE(item) != 3) {
        PyErr_SetString(PyExc_TypeError, "an event must be a (position, type, body) tuple");
        return -1;
    }
    if (i == 0) {
        long long position = PyLong_AsLongLong(PyTuple_GET_ITEM(item, 0));
        if (position == -1 && PyErr_Occurred()) {
            return -1;
        }
        for (int k = 0; k < 8; k++) {
            f->int8[k] = (char)((unsigned long long)position >> (56 - 8 * k));
        }
        f->data = f->int8;
        f->n = 8;
        return 0;
    }
    f->hold = Py_NewRef(PyTuple_GET_ITEM(item, i));
    f->data = field_bytes(f->hold, i == 1, &f->n, i == 1 ? "an event's type" : "a body");
    return f->data == NULL ? -1 : 0;
}

static int
record_field(PyObject *item, int i, Field *f)
{
    static PyObject **names[3] = {&n_key, &n_command_hash, &n_result};
    f->hold = PyObject_GetAttr(item, *names[i]);
    if (f->hold == NULL) {
        return -1;
    }
    f->data = field_bytes(f->hold, i < 2, &f->n, i == 0 ? "a record's key"
                                              : i == 1 ? "a record's command_hash"
                                                       : "a record's result");
    return f->data == NULL ? -1 : 0;
}

static PyObject *
native_encode_events(PyObject *module, PyObject *const *args, Py_ssize_t nargs)
{
    if (nargs != 2 || !PyBytes_Check(args[0]) || PyBytes_GET_SIZE(args[0]) != 16) {
        PyErr_SetString(PyExc_TypeError, "encode_events(originator: 16 bytes, events)");
        return NULL;
    }
    char lead[22] = {0, 4, 0, 0, 0, 16};
    memcpy(lead + 6, PyBytes_AS_STRING(args[0]), 16);
    return copy_rows(args[1], lead, sizeof lead, 3, event_field);
}

static PyObject *
native_encode_commands(PyObject *module, PyObject *const *args, Py_ssize_t nargs)
{
    if (nargs != 2 || !PyUnicode_Check(args[0])) {
        PyErr_SetString(PyExc_TypeError, "encode_commands(ledger: str, records)");
        return NULL;
    }
    Py_ssize_t n;
    const char *ledger = PyUnicode_AsUTF8AndSize(args[0], &n);
    if (ledger == NULL) {
        return NULL;
    }
    if (n > INT32_MAX) {
        PyErr_SetString(PyExc_OverflowError, "encode_commands: ledger name too long");
        return NULL;
    }
    char *lead = PyMem_Malloc((size_t)(2 + 4 + n));
    if (lead == NULL) {
        return PyErr_NoMemory();
    }
    lead[0] = 0;
    lead[1] = 4;
    put_field(lead + 2, ledger, n);
    PyObject *out = copy_rows(args[1], lead, 2 + 4 + n, 3, record_field);
    PyMem_Free(lead);
    return out;
}

/* --- the batch transaction through libpq, without the GIL --------------------------------- */

typedef struct pg_conn PGconn;
typedef struct pg_result PGresult;
enum { PGRES_COMMAND_OK = 1, PGRES_COPY_IN = 4 };             /* ExecStatusType */
enum { CONNECTION_OK = 0 };                                   /* ConnStatusType */
enum { PQTRANS_IDLE = 0 };                                    /* PGTransactionStatusType */
#define PG_DIAG_SQLSTATE 'C'

static struct {
    PGresult *(*exec)(PGconn *, const char *);
    int (*result_status)(const PGresult *);
    char *(*cmd_tuples)(PGresult *);
    void (*clear)(PGresult *);
    int (*put_copy_data)(PGconn *, const char *, int);
    int (*put_copy_end)(PGconn *, const char *);
    PGresult *(*get_result)(PGconn *);
    char *(*error_message)(const PGconn *);
    char *(*result_error_message)(const PGresult *);
    char *(*result_error_field)(const PGresult *, int);
    int (*set_nonblocking)(PGconn *, int);
    int (*is_nonblocking)(const PGconn *);
    int (*status)(const PGconn *);
    int (*transaction_status)(const PGconn *);
    int (*lib_version)(void);
} pq;
static int pq_loaded = -1; /* 1 once every function above was found, 0 if not; -1: not looked */
static char pq_path[4096];

#ifdef __linux__
/* Every loaded shared object whose file name starts with "libpq": exactly one is usable. */
static int
find_libpq(struct dl_phdr_info *info, size_t size, void *data)
{
    int *count = data;
    const char *name = info->dlpi_name;
    const char *base = name == NULL ? NULL : strrchr(name, '/');
    base = base == NULL ? name : base + 1;
    if (base != NULL && strncmp(base, "libpq", 5) == 0 && strstr(base, ".so") != NULL) {
        if (++*count == 1 && strlen(name) < sizeof pq_path) {
            strcpy(pq_path, name);
        }
    }
    return 0;
}
#endif

#define PQ_SYMBOL(field, symbol) (*(void **)&pq.field = dlsym(lib, symbol)) != NULL

/* Look libpq's functions up in the copy psycopg loaded; 1 if all are there, 0 if not. */
static int
load_libpq(void)
{
#ifdef __linux__
    int count = 0;
    pq_path[0] = '\0';
    dl_iterate_phdr(find_libpq, &count);
    if (count != 1) {
        return 0; /* none, or two different ones: which one psycopg uses is not known */
    }
    void *lib = dlopen(pq_path, RTLD_NOW | RTLD_NOLOAD);
    if (lib == NULL) {
        return 0;
    }
    return PQ_SYMBOL(exec, "PQexec") && PQ_SYMBOL(result_status, "PQresultStatus") &&
           PQ_SYMBOL(cmd_tuples, "PQcmdTuples") && PQ_SYMBOL(clear, "PQclear") &&
           PQ_SYMBOL(put_copy_data, "PQputCopyData") &&
           PQ_SYMBOL(put_copy_end, "PQputCopyEnd") && PQ_SYMBOL(get_result, "PQgetResult") &&
           PQ_SYMBOL(error_message, "PQerrorMessage") &&
           PQ_SYMBOL(result_error_message, "PQresultErrorMessage") &&
           PQ_SYMBOL(result_error_field, "PQresultErrorField") &&
           PQ_SYMBOL(set_nonblocking, "PQsetnonblocking") &&
           PQ_SYMBOL(is_nonblocking, "PQisnonblocking") && PQ_SYMBOL(status, "PQstatus") &&
           PQ_SYMBOL(transaction_status, "PQtransactionStatus") &&
           PQ_SYMBOL(lib_version, "PQlibVersion");
#else
    return 0;
#endif
}

enum { DONE = 0, FENCED = 1, FAILED = 2 };
#define MAX_COPIES 4
#define COPY_CHUNK (1 << 20)

typedef struct {
    const char *head, *lock;
    int copies;
    const char *copy_sql[MAX_COPIES];
    const char *data[MAX_COPIES];
    Py_ssize_t size[MAX_COPIES];
    char message[1024];
    char sqlstate[6];
} Commit;

/* Keep a failed result's message and SQLSTATE (or the connection's message); FAILED. */
static int
failed(Commit *c, PGconn *conn, PGresult *res, const char *what)
{
    const char *text = res != NULL ? pq.result_error_message(res) : NULL;
    if (text == NULL || text[0] == '\0') {
        text = pq.error_message(conn);
    }
    snprintf(c->message, sizeof c->message, "%s: %s", what, text != NULL ? text : "?");
    const char *state = res != NULL ? pq.result_error_field(res, PG_DIAG_SQLSTATE) : NULL;
    snprintf(c->sqlstate, sizeof c->sqlstate, "%s", state != NULL ? state : "");
    if (res != NULL) {
        pq.clear(res);
    }
    return FAILED;
}

/* One statement that must end in ``expected``; DONE or FAILED. */
static int
run(Commit *c, PGconn *conn, const char *sql, int expected, PGresult **keep)
{
    PGresult *res = pq.exec(conn, sql);
    if (res == NULL || pq.result_status(res) != expected) {
        return failed(c, conn, res, "statement failed");
    }
    if (keep != NULL) {
        *keep = res;
    }
    else {
        pq.clear(res);
    }
    return DONE;
}

static int
copy_in(Commit *c, PGconn *conn, int i)
{
    if (run(c, conn, c->copy_sql[i], PGRES_COPY_IN, NULL) != DONE) {
        return FAILED;
    }
    for (Py_ssize_t sent = 0; sent < c->size[i]; sent += COPY_CHUNK) {
        Py_ssize_t n = c->size[i] - sent < COPY_CHUNK ? c->size[i] - sent : COPY_CHUNK;
        if (pq.put_copy_data(conn, c->data[i] + sent, (int)n) != 1) {
            pq.put_copy_end(conn, "the writer could not send its batch");
            failed(c, conn, NULL, "COPY data not sent");
            PGresult *res;
            while ((res = pq.get_result(conn)) != NULL) {
                pq.clear(res);
            }
            return FAILED;
        }
    }
    int status = DONE;
    if (pq.put_copy_end(conn, NULL) != 1) {
        status = failed(c, conn, NULL, "COPY not ended");
    }
    PGresult *res;
    while ((res = pq.get_result(conn)) != NULL) {
        if (status == DONE && pq.result_status(res) != PGRES_COMMAND_OK) {
            status = failed(c, conn, res, "COPY failed");
        }
        else {
            pq.clear(res);
        }
    }
    return status;
}

/* The whole transaction; runs without the GIL and touches no Python object. */
static int
commit_batch(PGconn *conn, Commit *c)
{
    int nonblocking = pq.is_nonblocking(conn);
    if (nonblocking && pq.set_nonblocking(conn, 0) != 0) {
        return failed(c, conn, NULL, "cannot make the connection blocking");
    }
    PGresult *head = NULL;
    int status = run(c, conn, c->head, PGRES_COMMAND_OK, &head);
    if (status == DONE) {
        const char *rows = pq.cmd_tuples(head);
        if (rows == NULL || strcmp(rows, "1") != 0) {
            status = FENCED; /* the head update matched no row: another writer owns it */
        }
        pq.clear(head);
    }
    if (status == DONE && c->lock != NULL) {
        status = run(c, conn, c->lock, PGRES_COMMAND_OK, NULL);
    }
    for (int i = 0; status == DONE && i < c->copies; i++) {
        status = copy_in(c, conn, i);
    }
    if (status == DONE) {
        status = run(c, conn, "COMMIT", PGRES_COMMAND_OK, NULL);
        if (status == DONE && pq.transaction_status(conn) != PQTRANS_IDLE) {
            status = failed(c, conn, NULL, "COMMIT left a transaction open");
        }
    }
    if (status != DONE && pq.status(conn) == CONNECTION_OK &&
        pq.transaction_status(conn) != PQTRANS_IDLE) {
        PGresult *res = pq.exec(conn, "ROLLBACK");
        if (res != NULL) {
            pq.clear(res);
        }
    }
    if (nonblocking) {
        pq.set_nonblocking(conn, 1);
    }
    return status;
}

static const char *
bytes_arg(PyObject *value, Py_ssize_t *size, const char *what)
{
    if (!PyBytes_Check(value)) {
        PyErr_Format(PyExc_TypeError, "commit: %s must be bytes", what);
        return NULL;
    }
    if (size != NULL) {
        *size = PyBytes_GET_SIZE(value);
    }
    else if ((Py_ssize_t)strlen(PyBytes_AS_STRING(value)) != PyBytes_GET_SIZE(value)) {
        PyErr_Format(PyExc_ValueError, "commit: %s holds a NUL byte", what);
        return NULL;
    }
    return PyBytes_AS_STRING(value);
}

static PyObject *
native_commit(PyObject *module, PyObject *const *args, Py_ssize_t nargs)
{
    if (nargs != 4 || !PyTuple_Check(args[3])) {
        PyErr_SetString(PyExc_TypeError,
                        "commit(pgconn_ptr, head_sql, lock_sql | None, ((copy_sql, rows), ...))");
        return NULL;
    }
    if (pq_loaded < 0) {
        pq_loaded = load_libpq();
    }
    if (!pq_loaded) {
        PyErr_SetString(PyExc_RuntimeError, "ledger._store: libpq was not found");
        return NULL;
    }
    PGconn *conn = PyLong_AsVoidPtr(args[0]);
    if (conn == NULL) {
        if (!PyErr_Occurred()) {
            PyErr_SetString(PyExc_ValueError, "commit: the connection is closed");
        }
        return NULL;
    }
    Commit c;
    memset(&c, 0, sizeof c);
    c.head = bytes_arg(args[1], NULL, "head_sql");
    if (c.head == NULL) {
        return NULL;
    }
    if (args[2] != Py_None && (c.lock = bytes_arg(args[2], NULL, "lock_sql")) == NULL) {
        return NULL;
    }
    PyObject *copies = args[3];
    if (PyTuple_GET_SIZE(copies) > MAX_COPIES) {
        PyErr_SetString(PyExc_ValueError, "commit: too many COPYs");
        return NULL;
    }
    for (Py_ssize_t i = 0; i < PyTuple_GET_SIZE(copies); i++) {
        PyObject *pair = PyTuple_GET_ITEM(copies, i);
        if (!PyTuple_Check(pair) || PyTuple_GET_SIZE(pair) != 2) {
            PyErr_SetString(PyExc_TypeError, "commit: a COPY is (sql, rows)");
            return NULL;
        }
        c.copy_sql[i] = bytes_arg(PyTuple_GET_ITEM(pair, 0), NULL, "a COPY statement");
        c.data[i] = c.copy_sql[i] == NULL
                        ? NULL
                        : bytes_arg(PyTuple_GET_ITEM(pair, 1), &c.size[i], "COPY rows");
        if (c.data[i] == NULL) {
            return NULL;
        }
        c.copies++;
    }
    /* The connection must be idle and in good order, as psycopg's pool hands it out. */
    if (pq.status(conn) != CONNECTION_OK || pq.transaction_status(conn) != PQTRANS_IDLE) {
        PyErr_SetString(PyExc_ValueError, "commit: the connection is not idle");
        return NULL;
    }
    int status;
    /* The arguments (and the bytes they hold) stay referenced by the caller meanwhile. */
    Py_BEGIN_ALLOW_THREADS
    status = commit_batch(conn, &c);
    Py_END_ALLOW_THREADS
    if (status == DONE) {
        Py_RETURN_NONE;
    }
    if (status == FENCED) {
        return Py_BuildValue("(ss)", "fenced", "");
    }
    /* The message is in the connection's client_encoding and may have been cut mid-character. */
    PyObject *message = PyUnicode_DecodeUTF8(c.message, (Py_ssize_t)strlen(c.message), "replace");
    if (message == NULL) {
        return NULL;
    }
    return Py_BuildValue("(sNs)", "error", message, c.sqlstate);
}

static PyObject *
native_libpq(PyObject *module, PyObject *unused)
{
    if (pq_loaded < 0) {
        pq_loaded = load_libpq(); /* on first use: psycopg has loaded its libpq by then */
    }
    if (!pq_loaded) {
        Py_RETURN_NONE;
    }
    return Py_BuildValue("(si)", pq_path, pq.lib_version());
}

static PyMethodDef methods[] = {
    {"encode_events", (PyCFunction)(void (*)(void))native_encode_events, METH_FASTCALL,
     "encode_events(originator: bytes, events) -> bytes: ledger.store.encode_events."},
    {"encode_commands", (PyCFunction)(void (*)(void))native_encode_commands, METH_FASTCALL,
     "encode_commands(ledger, records) -> bytes: ledger.store.encode_commands."},
    {"commit", (PyCFunction)(void (*)(void))native_commit, METH_FASTCALL,
     "commit(pgconn_ptr, head_sql, lock_sql, copies) -> None | ('fenced', '') | "
     "('error', message, sqlstate): a batch's transaction through libpq, without the GIL."},
    {"libpq", native_libpq, METH_NOARGS,
     "libpq() -> (path, version) of the libpq that commit() uses, or None (not found)."},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module_def = {
    PyModuleDef_HEAD_INIT, "ledger._store",
    "The store's COPY framing and batch commit, in C (see ledger/store.py).", -1, methods,
    NULL, NULL, NULL, NULL,
};

PyMODINIT_FUNC
PyInit__store(void)
{
    n_key = PyUnicode_InternFromString("key");
    n_command_hash = PyUnicode_InternFromString("command_hash");
    n_result = PyUnicode_InternFromString("result");
    if (n_key == NULL || n_command_hash == NULL || n_result == NULL) {
        return NULL;
    }
    return PyModule_Create(&module_def);
}
