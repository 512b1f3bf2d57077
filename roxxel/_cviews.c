/* roxxel._cviews: many records' NumPy views, made in C.
 *
 * views(bases, slots, begins, ends) -> Views, an iterator
 *
 *   bases   a sequence of 1-d, contiguous np.uint8 arrays (shard payloads)
 *   slots   1-d int64 buffer: which base each record is in
 *   begins  1-d int64 buffer: where each record starts in its base
 *   ends    1-d int64 buffer: where each record ends
 *
 * Record i is bases[slots[i]][begins[i]:ends[i]]: a zero-copy view, read-only when its
 * base is, that keeps the base's memory alive. The three columns are copied when the
 * iterator is made, and every slot and bound is checked then, before any pointer is
 * formed; a bad one raises IndexError and nothing is yielded. The iterator keeps its bases until it is exhausted or closed,
 * then lets go of them (so a memory map under them can be closed). Its length hint is
 * the number of records left.
 *
 * The pure-Python twin, with the same contract, is roxxel.views.PyViews; the tests run
 * both. This module only saves the interpreter's per-record work: NumPy's slicing
 * machinery and a Python loop around it cost more than the slice itself.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <stdint.h>
#include <string.h>

#define NPY_NO_DEPRECATED_API NPY_1_7_API_VERSION
#include <numpy/arrayobject.h>

static PyArray_Descr *uint8_descr; /* one reference, owned by the module */

typedef struct {
    PyObject_HEAD
    PyObject *bases; /* tuple of arrays, or NULL once exhausted or closed */
    int64_t *rows;   /* (slot, begin, end) per record: checked copies the object owns */
    Py_ssize_t at, n;
} ViewsObject;

/* Let go of everything; the object is left exhausted first, so code that runs while
 * the references are dropped (a finalizer) finds nothing more to yield. */
static void
views_release(ViewsObject *self)
{
    int64_t *rows = self->rows;
    PyObject *bases = self->bases;
    self->at = self->n;
    self->rows = NULL;
    self->bases = NULL;
    PyMem_Free(rows);
    Py_XDECREF(bases);
}

static int
views_traverse(ViewsObject *self, visitproc visit, void *arg)
{
    Py_VISIT(self->bases);
    return 0;
}

static int
views_clear(ViewsObject *self)
{
    views_release(self);
    return 0;
}

static void
views_dealloc(ViewsObject *self)
{
    PyObject_GC_UnTrack(self);
    views_release(self);
    PyObject_GC_Del(self);
}

static PyObject *
views_next(ViewsObject *self)
{
    if (self->at >= self->n) {
        views_release(self);
        return NULL;
    }
    const int64_t *row = self->rows + 3 * self->at++;
    /* A strong reference, taken before anything allocates: an allocation can run a
     * collection, whose finalizers can let another thread close this iterator. */
    PyArrayObject *base = (PyArrayObject *)PyTuple_GET_ITEM(self->bases, row[0]);
    Py_INCREF(base);
    npy_intp length = (npy_intp)(row[2] - row[1]);
    char *data = PyArray_BYTES(base) + row[1];
    Py_INCREF(uint8_descr); /* stolen by PyArray_NewFromDescr */
    PyObject *view = PyArray_NewFromDescr(&PyArray_Type, uint8_descr, 1, &length, NULL, data,
                                          PyArray_FLAGS(base) & NPY_ARRAY_WRITEABLE, NULL);
    if (view == NULL) {
        Py_DECREF(base);
        return NULL;
    }
    if (PyArray_SetBaseObject((PyArrayObject *)view, (PyObject *)base) < 0) { /* steals base */
        Py_DECREF(view);
        return NULL;
    }
    return view;
}

static PyObject *
views_length_hint(ViewsObject *self, PyObject *Py_UNUSED(ignored))
{
    return PyLong_FromSsize_t(self->n - self->at);
}

static PyObject *
views_close(ViewsObject *self, PyObject *Py_UNUSED(ignored))
{
    views_release(self);
    Py_RETURN_NONE;
}

static PyMethodDef views_methods[] = {
    {"__length_hint__", (PyCFunction)views_length_hint, METH_NOARGS,
     "The number of records not yet yielded."},
    {"close", (PyCFunction)views_close, METH_NOARGS,
     "Yield nothing more and let go of the bases (idempotent)."},
    {NULL, NULL, 0, NULL},
};

static PyTypeObject ViewsType = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "roxxel._cviews.Views",
    .tp_doc = "Records' np.uint8 views, made in C; see roxxel.views.record_views.",
    .tp_basicsize = sizeof(ViewsObject),
    .tp_flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_HAVE_GC,
    .tp_dealloc = (destructor)views_dealloc,
    .tp_traverse = (traverseproc)views_traverse,
    .tp_clear = (inquiry)views_clear,
    .tp_iter = PyObject_SelfIter,
    .tp_iternext = (iternextfunc)views_next,
    .tp_methods = views_methods,
};

/* A 1-d, contiguous buffer of native int64 from `obj`, or -1 with TypeError. */
static int
get_int64s(PyObject *obj, Py_buffer *view, const char *name)
{
    if (PyObject_GetBuffer(obj, view, PyBUF_RECORDS_RO) < 0)
        return -1;
    const char *f = view->format ? view->format : "B";
    if (*f == '@' || *f == '=' || (*f == '<' && PY_LITTLE_ENDIAN) || (*f == '>' && !PY_LITTLE_ENDIAN))
        f++;
    if (view->ndim != 1 || view->itemsize != 8 || !(strcmp(f, "q") == 0 || strcmp(f, "l") == 0) ||
        !PyBuffer_IsContiguous(view, 'C')) {
        PyErr_Format(PyExc_TypeError, "%s must be a 1-d contiguous array of native int64, got "
                     "format '%s' with %d dimension(s)", name, view->format ? view->format : "B",
                     view->ndim);
        PyBuffer_Release(view);
        return -1;
    }
    return 0;
}

/* Every base a 1-d, contiguous np.uint8 array; -1 with TypeError if not. */
static int
check_bases(PyObject *bases)
{
    Py_ssize_t m = PyTuple_GET_SIZE(bases);
    for (Py_ssize_t k = 0; k < m; k++) {
        PyObject *base = PyTuple_GET_ITEM(bases, k);
        if (!PyArray_Check(base) || PyArray_NDIM((PyArrayObject *)base) != 1 ||
            PyArray_TYPE((PyArrayObject *)base) != NPY_UINT8 ||
            !PyArray_IS_C_CONTIGUOUS((PyArrayObject *)base)) {
            PyErr_Format(PyExc_TypeError, "base %zd must be a 1-d contiguous np.uint8 array, got %R",
                         k, (PyObject *)Py_TYPE(base));
            return -1;
        }
    }
    return 0;
}

/* Copy the columns into self->rows, checking that every slot names a base and every
 * record lies inside it; -1 with an exception if not. The copy is what views_next
 * reads: the caller's arrays may change afterwards without effect. */
static int
copy_rows(ViewsObject *self, const Py_buffer *slots, const Py_buffer *begins, const Py_buffer *ends)
{
    Py_ssize_t n = slots->shape[0];
    if (begins->shape[0] != n || ends->shape[0] != n) {
        PyErr_Format(PyExc_ValueError, "slots, begins and ends must have one length, got %zd, %zd "
                     "and %zd", n, begins->shape[0], ends->shape[0]);
        return -1;
    }
    if (n > PY_SSIZE_T_MAX / (Py_ssize_t)(3 * sizeof(int64_t))) {
        PyErr_NoMemory();
        return -1;
    }
    self->rows = PyMem_Malloc(n ? (size_t)n * 3 * sizeof(int64_t) : 1);
    if (self->rows == NULL) {
        PyErr_NoMemory();
        return -1;
    }
    const int64_t *s_in = slots->buf, *b_in = begins->buf, *e_in = ends->buf;
    Py_ssize_t m = PyTuple_GET_SIZE(self->bases);
    for (Py_ssize_t i = 0; i < n; i++) {
        int64_t s = s_in[i], b = b_in[i], e = e_in[i];
        if (s < 0 || s >= m) {
            PyErr_Format(PyExc_IndexError, "record %zd: slot %lld is not one of the %zd bases",
                         i, (long long)s, m);
            return -1;
        }
        npy_intp size = PyArray_DIM((PyArrayObject *)PyTuple_GET_ITEM(self->bases, s), 0);
        if (b < 0 || b > e || e > size) {
            PyErr_Format(PyExc_IndexError, "record %zd: bounds [%lld, %lld) are outside base %lld "
                         "of %zd bytes", i, (long long)b, (long long)e, (long long)s, (Py_ssize_t)size);
            return -1;
        }
        self->rows[3 * i] = s;
        self->rows[3 * i + 1] = b;
        self->rows[3 * i + 2] = e;
    }
    self->n = n;
    return 0;
}

static PyObject *
views_new(PyObject *Py_UNUSED(module), PyObject *args)
{
    PyObject *bases, *slots, *begins, *ends;
    if (!PyArg_ParseTuple(args, "OOOO:views", &bases, &slots, &begins, &ends))
        return NULL;
    ViewsObject *self = PyObject_GC_New(ViewsObject, &ViewsType);
    if (self == NULL)
        return NULL;
    self->bases = NULL;
    self->rows = NULL;
    self->at = self->n = 0;
    self->bases = PySequence_Tuple(bases);
    if (self->bases == NULL || check_bases(self->bases) < 0) {
        Py_DECREF(self);
        return NULL;
    }
    Py_buffer columns[3];
    const char *names[3] = {"slots", "begins", "ends"};
    PyObject *objects[3] = {slots, begins, ends};
    int got = 0, ok = 1;
    for (; got < 3; got++) {
        if (get_int64s(objects[got], &columns[got], names[got]) < 0) {
            ok = 0;
            break;
        }
    }
    if (ok && copy_rows(self, &columns[0], &columns[1], &columns[2]) < 0)
        ok = 0;
    for (int k = 0; k < got; k++)
        PyBuffer_Release(&columns[k]);
    if (!ok) {
        Py_DECREF(self); /* tp_dealloc frees what was made */
        return NULL;
    }
    self->at = 0;
    PyObject_GC_Track(self);
    return (PyObject *)self;
}

static PyMethodDef module_methods[] = {
    {"views", views_new, METH_VARARGS,
     "views(bases, slots, begins, ends): an iterator of bases[slots[i]][begins[i]:ends[i]]."},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {
    PyModuleDef_HEAD_INIT, "roxxel._cviews", "Records' NumPy views, made in C.", -1, module_methods,
};

PyMODINIT_FUNC
PyInit__cviews(void)
{
    import_array();
    if (PyType_Ready(&ViewsType) < 0)
        return NULL;
    uint8_descr = PyArray_DescrFromType(NPY_UINT8);
    if (uint8_descr == NULL)
        return NULL;
    return PyModule_Create(&module);
}
