# distutils: language = c++
# cython: language_level=3, boundscheck=False, wraparound=False, cdivision=True
# cython: initializedcheck=False, nonecheck=False
"""The tile kernel compiled: `reference.TileState`'s API and semantics, bit for bit.

Layout. Entities get int32 ids (a dict from the str key); each holds its tiles in a
``std::vector`` in the order the reference's dict would iterate them (insertion order: a new
tile goes last, a dropped one leaves a gap that closes), because min, max and last resolve ties
(``-0.0`` against ``0.0``, NaN) in that order. A tile is one 64-byte struct; its distinct values
are interned to int32 ids per `TileState` (refcounted by the tiles holding them) and kept as a
sorted array, inline up to two. Window sums port CPython's ``math_fsum`` (Shewchuk partials
and the half-even fix-up), fed the tile sums in the same order. Times are int64; every bound
is computed in 128 bits, so huge and negative times round like Python's ``ts - ts % m``.

`expire` walks an index of tile starts (``std::map`` start -> entity ids, stale entries
skipped) and a list of entities left with no tile, so a call costs what it expires.

Deliberate differences, all on inputs the pipeline never makes (each raises instead):
entities and distinct values must be `str`; window kinds must be TUMBLING, HOPPING or SLIDING
with positive sizes; a tile start must fit int64 (times within `tile_ms` of -2**63); counts,
tile starts and times given to `load` must fit int64 and sums, mins, maxes, lasts are stored
as float.
"""

cimport cython
from cython.operator cimport dereference as deref
from libc.stdint cimport INT64_MAX, INT64_MIN, int32_t, int64_t, uint8_t, uint32_t, uint64_t
from libc.string cimport memcpy
from libcpp.map cimport map as cmap
from libcpp.string cimport string
from libcpp.vector cimport vector

import numpy as np

from .reference import AGGREGATES, HOPPING, NO_TS, SLIDING, TUMBLING

__all__ = ["TileState", "fsum"]

cdef extern from *:
    """
    #include <stdint.h>
    #include <stdlib.h>
    #include <string.h>
    #include <cmath>
    #include <algorithm>
    #include <string>
    #include <vector>

    /* Python's `a % m` for m > 0 (C's % truncates toward zero). */
    static inline int64_t sw_floor_mod(int64_t a, int64_t m) {
        int64_t r = a % m;
        return r < 0 ? r + m : r;
    }

    /* *start = ts - ts % tile_ms (Python's floor); 0 when that is below INT64_MIN. */
    static inline int sw_tile_start(int64_t ts, int64_t tile_ms, int64_t *start) {
        __int128 s = (__int128)ts - sw_floor_mod(ts, tile_ms);
        if (s < (__int128)INT64_MIN) return 0;
        *start = (int64_t)s;
        return 1;
    }

    /* Does a tile starting at s end at or before h (s + tile_ms <= h, exactly)? */
    static inline int sw_ends_by(int64_t s, int64_t tile_ms, int64_t h) {
        return (__int128)s + tile_ms <= (__int128)h;
    }

    /* The tile starts [*lo, *hi] (closed, int64) that the window read at ts covers, as
       reference.WindowSpec.bounds gives them ([start, end), Python ints); 0: none. */
    static inline int sw_bounds(int kind, int64_t ts, int64_t duration_ms, int64_t step_ms,
                                int64_t tile_ms, int64_t *lo, int64_t *hi) {
        __int128 start, end;
        if (kind == 0) {
            start = (__int128)ts - sw_floor_mod(ts, duration_ms);
            end = start + duration_ms;
        } else if (kind == 1) {
            start = (__int128)ts - sw_floor_mod(ts, step_ms);
            end = start + duration_ms;
        } else {
            end = (__int128)ts - sw_floor_mod(ts, tile_ms) + tile_ms;
            start = end - duration_ms;
        }
        end -= 1;
        if (start < (__int128)INT64_MIN) start = INT64_MIN;
        if (end > (__int128)INT64_MAX) end = INT64_MAX;
        if (start > end) return 0;
        *lo = (int64_t)start;
        *hi = (int64_t)end;
        return 1;
    }

    /* CPython's math_fsum (Modules/mathmodule.c) as an accumulator: the same partials, the
       same special-value and overflow rules, the same half-even correction at the end. */
    #define SW_NUM_PARTIALS 32
    /* CPython keeps hi, yr, lo volatile against x87's extended precision; SSE2 and other
       IEEE doubles round every operation already, and the compiler may not reorder them. */
    #if defined(__i386__) && !defined(__SSE2_MATH__)
    #define SW_FSUM_VOLATILE volatile
    #else
    #define SW_FSUM_VOLATILE
    #endif
    #define SW_FSUM_OVERFLOW 1      /* OverflowError("intermediate overflow in fsum") */
    #define SW_FSUM_INF_MINUS_INF 2 /* ValueError("-inf + inf in fsum") */
    #define SW_NOMEM 3
    #define SW_COUNT_OVERFLOW 4

    typedef struct {
        double ps[SW_NUM_PARTIALS];
        double *p;
        ptrdiff_t n, m;
        double special_sum, inf_sum;
    } sw_fsum;

    static inline void sw_fsum_init(sw_fsum *f) {
        f->p = f->ps;
        f->n = 0;
        f->m = SW_NUM_PARTIALS;
        f->special_sum = 0.0;
        f->inf_sum = 0.0;
    }

    static inline void sw_fsum_free(sw_fsum *f) {
        if (f->p != f->ps) free(f->p);
        f->p = f->ps;
    }

    static int sw_fsum_grow(sw_fsum *f) {
        ptrdiff_t m = f->m * 2;
        double *v;
        if (f->p == f->ps) {
            v = (double *)malloc(sizeof(double) * m);
            if (v != NULL) memcpy(v, f->ps, sizeof(double) * f->n);
        } else {
            v = (double *)realloc(f->p, sizeof(double) * m);
        }
        if (v == NULL) return SW_NOMEM;
        f->p = v;
        f->m = m;
        return 0;
    }

    static inline int sw_fsum_add(sw_fsum *f, double x) {
        ptrdiff_t i, j, n = f->n;
        double y, t, xsave = x;
        SW_FSUM_VOLATILE double hi, yr, lo;
        double *p = f->p;
        for (i = j = 0; j < n; j++) {       /* for y in partials */
            y = p[j];
            if (fabs(x) < fabs(y)) {
                t = x; x = y; y = t;
            }
            hi = x + y;
            yr = hi - x;
            lo = y - yr;
            if (lo != 0.0)
                p[i++] = lo;
            x = hi;
        }
        n = i;                              /* ps[i:] = [x] */
        if (x != 0.0) {
            if (!std::isfinite(x)) {
                /* intermediate overflow, or a nan or inf among the summands */
                if (std::isfinite(xsave)) {
                    f->n = n;
                    return SW_FSUM_OVERFLOW;
                }
                if (std::isinf(xsave))
                    f->inf_sum += xsave;
                f->special_sum += xsave;
                n = 0;                      /* reset partials */
            } else {
                if (n >= f->m) {
                    f->n = n;
                    if (sw_fsum_grow(f)) return SW_NOMEM;
                    p = f->p;
                }
                p[n++] = x;
            }
        }
        f->n = n;
        return 0;
    }

    static inline int sw_fsum_result(sw_fsum *f, double *out) {
        ptrdiff_t n = f->n;
        double x, y, *p = f->p;
        SW_FSUM_VOLATILE double hi, yr, lo = 0.0;
        if (f->special_sum != 0.0) {
            if (std::isnan(f->inf_sum)) return SW_FSUM_INF_MINUS_INF;
            *out = f->special_sum;
            return 0;
        }
        hi = 0.0;
        if (n > 0) {
            hi = p[--n];
            /* sum_exact(ps, hi) from the top, stop when the sum becomes inexact. */
            while (n > 0) {
                x = hi;
                y = p[--n];
                hi = x + y;
                yr = hi - x;
                lo = y - yr;
                if (lo != 0.0)
                    break;
            }
            /* Make half-even rounding work across multiple partials. */
            if (n > 0 && ((lo < 0.0 && p[n-1] < 0.0) || (lo > 0.0 && p[n-1] > 0.0))) {
                y = lo * 2.0;
                x = hi + y;
                yr = x - hi;
                if (y == yr)
                    hi = x;
            }
        }
        *out = hi;
        return 0;
    }

    /* One tile: 64 bytes. `d` holds its distinct ids and its dirty mark: bit 0 = changed
       since the last drain; bit 1 = up to two ids inline, each + 1 in 31 bits (bits 2-32 and
       33-63, 0: none, the smaller first); else d & ~3 is NULL (no id) or points to a sw_idset
       (sorted ids) of its own on the heap. */
    struct sw_tile {
        int64_t start;
        int64_t count;
        double sum, min, max;
        int64_t last_ts;
        double last;
        uint64_t d;
    };
    static_assert(sizeof(sw_tile) == 64, "a tile is 64 bytes");
    struct sw_idset { uint32_t n, cap; };  /* followed by cap int32 ids */
    #define SW_DIRTY ((uint64_t)1)
    #define SW_INLINE ((uint64_t)2)
    #define SW_MAX_ID 0x7ffffffe  /* the largest id that fits inline (+ 1 in 31 bits) */

    static inline uint64_t sw_inline(int32_t a, int32_t b) {  /* b < 0: none */
        return SW_INLINE | ((uint64_t)(uint32_t)(a + 1) << 2)
            | ((uint64_t)(uint32_t)(b + 1) << 33);
    }
    static inline sw_idset *sw_set(const sw_tile *t) {
        return (t->d & SW_INLINE) ? NULL : (sw_idset *)(uintptr_t)(t->d & ~(uint64_t)3);
    }
    static inline int32_t *sw_set_ids(sw_idset *s) { return (int32_t *)(s + 1); }
    static inline uint32_t sw_nd(const sw_tile *t) {
        if (t->d & SW_INLINE) return 1 + (uint32_t)((t->d >> 33) != 0);
        sw_idset *s = sw_set(t);
        return s == NULL ? 0 : s->n;
    }
    /* The tile's ids, sorted; `two` receives inline ones. */
    static inline int32_t *sw_ids(const sw_tile *t, int32_t *two) {
        if (t->d & SW_INLINE) {
            two[0] = (int32_t)((t->d >> 2) & 0x7fffffff) - 1;
            two[1] = (int32_t)(t->d >> 33) - 1;
            return two;
        }
        sw_idset *s = sw_set(t);
        return s == NULL ? two : sw_set_ids(s);
    }
    static inline void sw_prefetch_ids(const sw_tile *t) {
        if (!(t->d & SW_INLINE)) __builtin_prefetch((const void *)(uintptr_t)(t->d & ~(uint64_t)3));
    }
    static inline int sw_is_dirty(const sw_tile *t) { return (int)(t->d & SW_DIRTY); }
    static inline void sw_mark_dirty(sw_tile *t) { t->d |= SW_DIRTY; }
    static inline void sw_clear_dirty(sw_tile *t) { t->d &= ~SW_DIRTY; }
    /* Heap bytes the tile's ids take (0: none, or inline). */
    static inline size_t sw_id_bytes(const sw_tile *t) {
        sw_idset *s = sw_set(t);
        return s == NULL ? 0 : sizeof(sw_idset) + sizeof(int32_t) * s->cap;
    }
    /* No ids left (the dirty mark stays). */
    static inline void sw_tile_free(sw_tile *t) {
        free(sw_set(t));
        t->d &= SW_DIRTY;
    }
    /* 1: added, 0: held already, -1: out of memory. */
    static inline int sw_tile_add_id(sw_tile *t, int32_t id) {
        uint64_t dirty = t->d & SW_DIRTY;
        sw_idset *s;
        if ((t->d & ~SW_DIRTY) == 0) {
            t->d = sw_inline(id, -1) | dirty;
            return 1;
        }
        if (t->d & SW_INLINE) {
            int32_t two[2];
            sw_ids(t, two);
            if (two[0] == id || two[1] == id) return 0;
            if (two[1] < 0) {
                t->d = (two[0] < id ? sw_inline(two[0], id) : sw_inline(id, two[0])) | dirty;
                return 1;
            }
            s = (sw_idset *)malloc(sizeof(sw_idset) + sizeof(int32_t) * 4);
            if (s == NULL) return -1;
            int32_t *ids = sw_set_ids(s);
            s->n = 3;
            s->cap = 4;
            ids[0] = two[0];
            ids[1] = two[1];
            ids[2] = id;
            std::sort(ids, ids + 3);
            t->d = (uint64_t)(uintptr_t)s | dirty;
            return 1;
        }
        s = sw_set(t);
        int32_t *ids = sw_set_ids(s);
        uint32_t n = s->n;
        uint32_t k = (uint32_t)(std::lower_bound(ids, ids + n, id) - ids);
        if (k < n && ids[k] == id) return 0;
        if (n == s->cap) {
            sw_idset *m = (sw_idset *)realloc(s, sizeof(sw_idset) + sizeof(int32_t) * 2 * s->cap);
            if (m == NULL) return -1;
            m->cap *= 2;
            s = m;
            ids = sw_set_ids(s);
            t->d = (uint64_t)(uintptr_t)s | dirty;
        }
        memmove(ids + k + 1, ids + k, sizeof(int32_t) * (n - k));
        ids[k] = id;
        s->n = n + 1;
        return 1;
    }
    /* dst = src with ids of its own; -1: out of memory (dst then has none). */
    static inline int sw_tile_copy(sw_tile *dst, const sw_tile *src) {
        *dst = *src;
        sw_idset *s = sw_set(src);
        if (s != NULL) {
            size_t bytes = sizeof(sw_idset) + sizeof(int32_t) * s->cap;
            sw_idset *m = (sw_idset *)malloc(bytes);
            if (m == NULL) { dst->d &= SW_DIRTY; return -1; }
            memcpy(m, s, bytes);
            dst->d = (uint64_t)(uintptr_t)m | (src->d & SW_DIRTY);
        }
        return 0;
    }
    /* Room for one more tile, growing by a quarter (not doubling): little spare room. */
    static inline void sw_reserve_one(std::vector<sw_tile> &v) {
        if (v.size() == v.capacity()) v.reserve(v.size() + v.size() / 4 + 2);
    }

    /* A tile changed or dropped since the last drain. */
    struct sw_dirty {
        int32_t eid;
        int64_t start;
    };
    /* By entity key (UTF-8 bytes compare as code points, like Python's str), then start. */
    static void sw_sort_dirty(std::vector<sw_dirty> &v, const std::vector<std::string> &names) {
        std::sort(v.begin(), v.end(), [&names](const sw_dirty &a, const sw_dirty &b) {
            int c = names[a.eid].compare(names[b.eid]);
            return c != 0 ? c < 0 : a.start < b.start;
        });
    }
    static void sw_sort_ids(int32_t *ids, size_t n, const std::vector<std::string> &values) {
        std::sort(ids, ids + n, [&values](int32_t a, int32_t b) { return values[a] < values[b]; });
    }
    static void sw_sort_by_start(std::vector<std::pair<int64_t, size_t>> &v) {
        std::sort(v.begin(), v.end());
    }
    static inline void sw_put_u16(std::string &out, uint32_t v) {
        out.push_back((char)(v & 0xff));
        out.push_back((char)((v >> 8) & 0xff));
    }
    static inline void sw_put_u64le(std::string &out, uint64_t v) {
        for (int k = 0; k < 8; k++) out.push_back((char)((v >> (8 * k)) & 0xff));
    }
    static inline void sw_put_u64be(std::string &out, uint64_t v) {
        for (int k = 7; k >= 0; k--) out.push_back((char)((v >> (8 * k)) & 0xff));
    }
    static inline uint64_t sw_bits(double d) { uint64_t u; memcpy(&u, &d, 8); return u; }
    static inline int sw_add_count(int64_t a, int64_t b, int64_t *out) {
        return __builtin_add_overflow(a, b, out);
    }
    """
    int64_t sw_floor_mod(int64_t a, int64_t m) noexcept nogil
    int sw_tile_start(int64_t ts, int64_t tile_ms, int64_t *start) noexcept nogil
    int sw_ends_by(int64_t s, int64_t tile_ms, int64_t h) noexcept nogil
    int sw_bounds(int kind, int64_t ts, int64_t duration_ms, int64_t step_ms, int64_t tile_ms,
                  int64_t *lo, int64_t *hi) noexcept nogil

    const int SW_FSUM_OVERFLOW
    const int SW_FSUM_INF_MINUS_INF
    const int SW_NOMEM
    const int SW_COUNT_OVERFLOW
    ctypedef struct sw_fsum:
        pass
    void sw_fsum_init(sw_fsum *f) noexcept nogil
    void sw_fsum_free(sw_fsum *f) noexcept nogil
    int sw_fsum_add(sw_fsum *f, double x) noexcept nogil
    int sw_fsum_result(sw_fsum *f, double *out) noexcept nogil

    cdef struct sw_tile:
        int64_t start
        int64_t count
        double sum
        double min
        double max
        int64_t last_ts
        double last
        uint64_t d
    uint32_t sw_nd(const sw_tile *t) noexcept nogil
    int32_t *sw_ids(const sw_tile *t, int32_t *two) noexcept nogil
    void sw_prefetch_ids(const sw_tile *t) noexcept nogil
    const int32_t SW_MAX_ID
    bint sw_is_dirty(const sw_tile *t) noexcept nogil
    void sw_mark_dirty(sw_tile *t) noexcept nogil
    void sw_clear_dirty(sw_tile *t) noexcept nogil
    size_t sw_id_bytes(const sw_tile *t) noexcept nogil
    void sw_tile_free(sw_tile *t) noexcept nogil
    int sw_tile_add_id(sw_tile *t, int32_t id) noexcept nogil
    int sw_tile_copy(sw_tile *dst, const sw_tile *src) noexcept nogil
    void sw_reserve_one(vector[sw_tile] &v) except + nogil

    cdef struct sw_dirty:
        int32_t eid
        int64_t start
    void sw_sort_dirty(vector[sw_dirty] &v, const vector[string] &names) except + nogil
    void sw_sort_ids(int32_t *ids, size_t n, const vector[string] &values) noexcept nogil
    cdef cppclass sw_pair "std::pair<int64_t, size_t>":
        sw_pair()
        sw_pair(int64_t, size_t)
        int64_t first
        size_t second
    void sw_sort_by_start(vector[sw_pair] &v) noexcept nogil
    void sw_put_u16(string &out, uint32_t v) except +
    void sw_put_u64le(string &out, unsigned long long v) except +
    void sw_put_u64be(string &out, unsigned long long v) except +
    unsigned long long sw_bits(double d) noexcept nogil
    bint sw_add_count(int64_t a, int64_t b, int64_t *out) noexcept nogil

cdef extern from "Python.h":
    bytes PyBytes_FromStringAndSize(const char *v, Py_ssize_t n)

if len(AGGREGATES) != 6:  # the read writes six columns per window
    raise ImportError("engine.kernel._tiles was built for 6 aggregates per window")

cdef int64_t _NO_TS = INT64_MIN
cdef double _NAN = float("nan")
cdef object _ERRORS = {
    SW_FSUM_OVERFLOW: (OverflowError, "intermediate overflow in fsum"),
    SW_FSUM_INF_MINUS_INF: (ValueError, "-inf + inf in fsum"),
    SW_NOMEM: (MemoryError, "tile kernel"),
    SW_COUNT_OVERFLOW: (OverflowError, "a count past int64 in the tile kernel"),
}


cdef int _raise(int err) except -1:
    kind, message = _ERRORS[err]
    raise kind(message)


cdef tuple _encode(str s):
    """(UTF-8 bytes that sort like the str, whether they are the strict encoding)."""
    try:
        return s.encode("utf-8"), True
    except UnicodeEncodeError:  # lone surrogates: still ordered, never packed
        return s.encode("utf-8", "surrogatepass"), False


def fsum(values):
    """`math.fsum` as the kernel computes window sums (its port, exposed to test it)."""
    cdef sw_fsum f
    cdef double total = 0.0
    cdef int err = 0
    sw_fsum_init(&f)
    try:
        for x in values:
            err = sw_fsum_add(&f, x)
            if err:
                break
        if not err:
            err = sw_fsum_result(&f, &total)
    finally:
        sw_fsum_free(&f)
    if err:
        _raise(err)
    return total


@cython.final
cdef class TileState:
    """Every live entity of one table in one partition: `reference.TileState`, compiled."""

    cdef readonly int64_t tile_ms
    cdef readonly tuple windows
    cdef readonly bint has_distinct
    cdef Py_ssize_t _nw
    cdef vector[int] _wkind
    cdef vector[int64_t] _wdur
    cdef vector[int64_t] _wstep
    cdef vector[uint8_t] _wdist

    # entities: id -> name, key bytes, tiles (insertion order), newest event time
    cdef dict _ids
    cdef list _names
    cdef vector[string] _keys
    cdef vector[uint8_t] _strict
    cdef vector[vector[sw_tile]] _tiles
    cdef vector[int64_t] _last
    cdef vector[uint8_t] _alive
    cdef vector[int32_t] _free_ids      # reusable now
    cdef vector[int32_t] _pending_ids   # forgotten; reusable after the next drain

    cdef cmap[int64_t, vector[int32_t]] _buckets  # tile start -> entities (may be stale)
    cdef vector[int32_t] _empty                    # entities that were left with no tile
    cdef vector[sw_dirty] _dirty                   # (entity, start) changed since drain

    # distinct values: interned, refcounted by the tiles holding them
    cdef dict _vals
    cdef list _val_objs
    cdef vector[string] _val_keys
    cdef vector[uint8_t] _val_strict
    cdef vector[int64_t] _val_refs
    cdef vector[int32_t] _val_free
    cdef vector[int32_t] _val_zero   # ids whose count fell to 0 (or new): released if still 0
    cdef vector[uint32_t] _stamp     # distinct counting: id -> epoch it was last counted in
    cdef uint32_t _epoch
    cdef bint _busy                  # fold_read runs without the GIL: nothing else may run

    cdef inline int _enter(self) except -1:
        if self._busy:
            raise RuntimeError("this TileState is in a fold_read in another thread; a kernel "
                               "is not shared between threads")
        return 0

    def __init__(self, int64_t tile_ms, windows, bint has_distinct):
        cdef uint8_t counted
        if tile_ms <= 0:
            raise ValueError("tile_ms must be > 0")
        self.tile_ms = tile_ms
        self.windows = tuple(windows)
        self.has_distinct = has_distinct
        self._nw = len(self.windows)
        for w in self.windows:
            kind, duration_ms, step_ms, distinct = w
            if kind not in (TUMBLING, HOPPING, SLIDING):
                raise ValueError(f"unknown window kind {kind!r}")
            if duration_ms <= 0 or (kind == HOPPING and step_ms <= 0):
                raise ValueError(f"window sizes must be > 0: {w!r}")
            self._wkind.push_back(kind)
            self._wdur.push_back(duration_ms)
            self._wstep.push_back(step_ms)
            counted = 1 if distinct and has_distinct else 0
            self._wdist.push_back(counted)
        self._ids = {}
        self._names = []
        self._vals = {}
        self._val_objs = []
        self._epoch = 0
        self._busy = False

    def __dealloc__(self):
        cdef size_t e, k
        for e in range(self._tiles.size()):
            for k in range(self._tiles[e].size()):
                sw_tile_free(&self._tiles[e][k])

    @property
    def width(self):
        """Columns `fold_read` writes per event."""
        return self._nw * 6

    def __len__(self):
        return len(self._ids)

    def __contains__(self, entity):
        return entity in self._ids

    def missing(self, entities):
        """The entities of a batch not held (to be loaded from the store first), once each."""
        held = self._ids
        return list(dict.fromkeys(e for e in entities if e not in held))

    # -- entities and values ------------------------------------------------------------------

    cdef int32_t _new_entity(self, str name) except -1:
        cdef int32_t eid
        key, strict = _encode(name)
        if not self._free_ids.empty():
            eid = self._free_ids.back()
            self._free_ids.pop_back()
            self._names[eid] = name
            self._keys[eid] = key
            self._strict[eid] = strict
            self._last[eid] = _NO_TS
            self._alive[eid] = 1
        else:
            if self._tiles.size() >= <size_t>INT64_MAX >> 33:
                raise OverflowError("too many entities")
            eid = <int32_t>self._tiles.size()
            self._names.append(name)
            self._keys.push_back(key)
            self._strict.push_back(strict)
            self._tiles.push_back(vector[sw_tile]())
            self._last.push_back(_NO_TS)
            self._alive.push_back(1)
        self._ids[name] = eid
        return eid

    cdef int _unref(self, sw_tile *t) except -1 nogil:
        cdef int32_t one[2]
        cdef int32_t *ids = sw_ids(t, one)
        cdef uint32_t j
        for j in range(sw_nd(t)):
            self._val_refs[ids[j]] -= 1
            if self._val_refs[ids[j]] == 0:
                self._val_zero.push_back(ids[j])
        sw_tile_free(t)
        return 0

    cdef int _clear_tiles(self, int32_t eid) except -1:
        cdef vector[sw_tile] *tiles = &self._tiles[eid]
        cdef size_t k
        for k in range(tiles.size()):
            self._unref(&deref(tiles)[k])
        vector[sw_tile]().swap(deref(tiles))
        return 0

    cdef void _forget(self, int32_t eid):
        del self._ids[self._names[eid]]
        self._clear_tiles(eid)
        self._alive[eid] = 0
        self._pending_ids.push_back(eid)

    cdef int32_t _intern(self, object value) except -1:
        cdef int32_t vid
        found = self._vals.get(value)
        if found is not None:
            return found
        if not isinstance(value, str):
            raise TypeError(f"distinct values must be str, not {type(value).__name__}")
        key, strict = _encode(value)
        if not self._val_free.empty():
            vid = self._val_free.back()
            self._val_free.pop_back()
            self._val_objs[vid] = value
            self._val_keys[vid] = key
            self._val_strict[vid] = strict
            self._val_refs[vid] = 0
        else:
            if len(self._val_objs) >= SW_MAX_ID:
                raise OverflowError("more than 2**31 - 2 distinct values held")
            vid = <int32_t>len(self._val_objs)
            self._val_objs.append(value)
            self._val_keys.push_back(key)
            self._val_strict.push_back(strict)
            self._val_refs.push_back(0)
            if self._stamp.size() < <size_t>vid + 2:  # + 1: read()'s value not interned
                self._stamp.resize(2 * vid + 2, 0)
        self._vals[value] = vid
        self._val_zero.push_back(vid)  # released unless a tile takes it
        return vid

    cdef void _release_values(self):
        cdef int32_t vid
        for vid in self._val_zero:
            if self._val_refs[vid] == 0 and self._val_objs[vid] is not None:
                del self._vals[self._val_objs[vid]]
                self._val_objs[vid] = None
                self._val_keys[vid] = string()
                self._val_free.push_back(vid)
        self._val_zero.clear()

    # -- loading --------------------------------------------------------------------------------

    def load(self, str entity not None, last_ts_ms, tiles):
        """Hold `entity` as stored: its newest event time and its tiles
        ``(start, count, sum, min, max, last_ts, last, distinct)``. Marks nothing dirty."""
        cdef int32_t eid
        cdef sw_tile t
        cdef size_t k, n
        cdef int32_t one[2]
        cdef int32_t *ids
        cdef int64_t last = _NO_TS if last_ts_ms is None else last_ts_ms
        self._enter()
        found = self._ids.get(entity)
        if found is None:
            eid = self._new_entity(entity)
        else:
            eid = found
            self._clear_tiles(eid)
        self._last[eid] = last
        cdef vector[sw_tile] *held = &self._tiles[eid]
        try:
            for start, count, total, lo, hi, last_ts, last_value, distinct in tiles:
                t.start = start
                t.count = count
                t.sum = total
                t.min = lo
                t.max = hi
                t.last_ts = last_ts
                t.last = last_value
                t.d = 0
                if self.has_distinct:
                    vids = [self._intern(d) for d in distinct]
                    for vid in vids:
                        if sw_tile_add_id(&t, vid) < 0:
                            sw_tile_free(&t)
                            raise MemoryError("tile kernel")
                    ids = sw_ids(&t, one)
                    for k in range(sw_nd(&t)):
                        self._val_refs[ids[k]] += 1
                n = held.size()
                for k in range(n):  # a start given twice: the later one, in the first's place
                    if deref(held)[k].start == t.start:
                        self._unref(&deref(held)[k])
                        deref(held)[k] = t
                        break
                else:
                    sw_reserve_one(deref(held))
                    held.push_back(t)
                    self._buckets[t.start].push_back(eid)
        finally:
            if held.empty():
                self._empty.push_back(eid)
            self._release_values()

    # -- the batch ----------------------------------------------------------------------------

    def fold_read(self, entities, ts_ms, values, distinct, fold, horizon_ms, out, prev_ts):
        """For each event i in order: drop the entity's tiles ending at or before
        ``horizon_ms[i]`` (NO_TS: none), ``prev_ts[i]`` = its newest event time before this
        event (NO_TS: none), fold it when ``fold[i]``, then write every window's aggregates to
        ``out[i]``. Every entity must be held (see `missing`/`load`). The events run without
        the GIL."""
        cdef list ents = entities if type(entities) is list else list(entities)
        cdef Py_ssize_t n = len(ents), i, stop = n, at = 0
        cdef const int64_t[::1] ts = np.ascontiguousarray(ts_ms, dtype=np.int64)
        cdef const double[::1] vs = np.ascontiguousarray(values, dtype=np.float64)
        cdef const uint8_t[::1] fd = np.ascontiguousarray(fold, dtype=np.bool_).view(np.uint8)
        cdef const int64_t[::1] hz = np.ascontiguousarray(horizon_ms, dtype=np.int64)
        cdef double[:, :] o = out
        cdef int64_t[:] pv = prev_ts
        if min(ts.shape[0], vs.shape[0], fd.shape[0], hz.shape[0], o.shape[0],
               pv.shape[0]) < n:
            raise ValueError("fold_read: an input or output array is shorter than entities")
        if o.shape[1] < self._nw * 6:
            raise ValueError(f"fold_read: out has {o.shape[1]} columns, needs {self.width}")
        if self.has_distinct and distinct is None and n:
            raise TypeError("fold_read: the table has a distinct field: pass its values")
        cdef vector[int32_t] eids = vector[int32_t](n)
        cdef vector[int32_t] dids = vector[int32_t](n)
        cdef vector[int64_t] starts = vector[int64_t](n)
        cdef int err = 0
        self._enter()
        missing = None
        try:
            for i in range(n):
                e = ents[i]
                found = self._ids.get(e)
                if found is None:
                    stop, missing = i, e
                    break
                eids[i] = found
                if fd[i]:
                    if not sw_tile_start(ts[i], self.tile_ms, &starts[i]):
                        raise OverflowError(f"event time {ts[i]}: its tile starts before -2**63")
                    if self.has_distinct:
                        dids[i] = self._intern(distinct[i])
            if stop:
                self._busy = True
                with nogil:
                    err = self._run(stop, eids.data(), &ts[0], &vs[0], dids.data(), &fd[0],
                                    &hz[0], starts.data(), <char *>&o[0, 0], o.strides[0],
                                    o.strides[1], &pv[0], pv.strides[0], &at)
        finally:
            self._busy = False
            self._release_values()
        if err:
            _raise(err)
        if missing is not None:
            raise KeyError(missing)

    cdef int _run(self, Py_ssize_t n, const int32_t *eids, const int64_t *ts, const double *vs,
                  const int32_t *dids, const uint8_t *fd, const int64_t *hz,
                  const int64_t *starts, char *out, Py_ssize_t os0, Py_ssize_t os1,
                  int64_t *prev, Py_ssize_t ps0, Py_ssize_t *at) except -1 nogil:
        cdef Py_ssize_t i
        cdef int32_t eid
        cdef int err
        for i in range(n):
            eid = eids[i]
            if hz[i] != _NO_TS:
                self._drop(eid, hz[i])
            (<int64_t *>(<char *>prev + i * ps0))[0] = self._last[eid]
            if fd[i]:
                err = self._fold(&self._tiles[eid], eid, ts[i], starts[i], vs[i], dids[i])
                if err:
                    at[0] = i
                    return err
            err = self._read(&self._tiles[eid], ts[i], out + i * os0, os1)
            if err:
                at[0] = i
                return err
        return 0

    cdef int _drop(self, int32_t eid, int64_t horizon_ms) except -1 nogil:
        """Drop the entity's tiles ending at or before the horizon, in place, keeping order."""
        cdef vector[sw_tile] *tiles = &self._tiles[eid]
        cdef size_t k, w = 0, n = tiles.size()
        cdef sw_tile *t
        for k in range(n):
            t = &deref(tiles)[k]
            if sw_ends_by(t.start, self.tile_ms, horizon_ms):
                if not sw_is_dirty(t):
                    self._dirty.push_back(sw_dirty(eid, t.start))
                self._unref(t)
            else:
                if w != k:
                    deref(tiles)[w] = t[0]
                w += 1
        if w != n:
            tiles.resize(w)
            if w == 0:
                self._empty.push_back(eid)
            if tiles.capacity() > 2 * w + 8:
                tiles.shrink_to_fit()
        return 0

    cdef int _fold(self, vector[sw_tile] *tiles, int32_t eid, int64_t ts, int64_t start,
                   double value, int32_t did) except -1 nogil:
        """Fold one event into its tile; eid < 0: a scratch copy (nothing recorded)."""
        cdef Py_ssize_t k
        cdef sw_tile *t
        cdef sw_tile fresh
        cdef int added
        for k in range(<Py_ssize_t>tiles.size() - 1, -1, -1):
            t = &deref(tiles)[k]
            if t.start == start:
                if sw_add_count(t.count, 1, &t.count):
                    return SW_COUNT_OVERFLOW
                t.sum += value
                if value < t.min:
                    t.min = value
                if value > t.max:
                    t.max = value
                if ts >= t.last_ts:
                    t.last_ts = ts
                    t.last = value
                if self.has_distinct:
                    added = sw_tile_add_id(t, did)
                    if added < 0:
                        return SW_NOMEM
                    if added and eid >= 0:
                        self._val_refs[did] += 1
                if eid >= 0 and not sw_is_dirty(t):
                    sw_mark_dirty(t)
                    self._dirty.push_back(sw_dirty(eid, start))
                break
        else:
            fresh.start = start
            fresh.count = 1
            fresh.sum = value
            fresh.min = value
            fresh.max = value
            fresh.last_ts = ts
            fresh.last = value
            fresh.d = 0
            if self.has_distinct:
                sw_tile_add_id(&fresh, did)  # inline: cannot fail
            if eid >= 0:
                sw_mark_dirty(&fresh)
                if self.has_distinct:
                    self._val_refs[did] += 1
                self._dirty.push_back(sw_dirty(eid, start))
                self._buckets[start].push_back(eid)
            sw_reserve_one(deref(tiles))
            tiles.push_back(fresh)
        if eid >= 0 and ts > self._last[eid]:
            self._last[eid] = ts
        return 0

    cdef int _read(self, vector[sw_tile] *tiles, int64_t ts, char *row,
                   Py_ssize_t stride) noexcept nogil:
        """Every window's six aggregates at `ts` into `row`; an SW_* error code or 0."""
        cdef sw_fsum f
        cdef Py_ssize_t w, col = 0
        cdef size_t k, n = tiles.size()
        cdef uint32_t j, epoch = 0
        cdef int64_t lo, hi, count, last_ts
        cdef double mn, mx, last, total
        cdef int64_t nd
        cdef bint first, counting
        cdef sw_tile *t
        cdef int32_t *ids
        cdef int32_t one[2]
        cdef int err
        for w in range(self._nw):
            count, nd, last_ts = 0, 0, _NO_TS
            mn = mx = last = _NAN
            sw_fsum_init(&f)
            if sw_bounds(self._wkind[w], ts, self._wdur[w], self._wstep[w], self.tile_ms,
                         &lo, &hi):
                counting = self._wdist[w]
                if counting:
                    self._epoch += 1
                    if self._epoch == 0:  # wrapped: no stale stamp may equal an epoch
                        for j in range(self._stamp.size()):
                            self._stamp[j] = 0
                        self._epoch = 1
                    epoch = self._epoch
                    for k in range(n):  # their id sets' cache misses, all at once
                        if lo <= deref(tiles)[k].start <= hi:
                            sw_prefetch_ids(&deref(tiles)[k])
                for k in range(n):
                    t = &deref(tiles)[k]
                    if t.start < lo or t.start > hi:
                        continue
                    first = count == 0
                    if sw_add_count(count, t.count, &count):
                        sw_fsum_free(&f)
                        return SW_COUNT_OVERFLOW
                    err = sw_fsum_add(&f, t.sum)
                    if err:
                        sw_fsum_free(&f)
                        return err
                    if first or t.min < mn:
                        mn = t.min
                    if first or t.max > mx:
                        mx = t.max
                    if t.last_ts > last_ts:
                        last_ts = t.last_ts
                        last = t.last
                    if counting:
                        ids = sw_ids(t, one)
                        for j in range(sw_nd(t)):
                            if self._stamp[ids[j]] != epoch:
                                self._stamp[ids[j]] = epoch
                                nd += 1
            err = sw_fsum_result(&f, &total)
            sw_fsum_free(&f)
            if err:
                return err
            (<double *>(row + col * stride))[0] = <double>count
            (<double *>(row + (col + 1) * stride))[0] = total
            (<double *>(row + (col + 2) * stride))[0] = mn
            (<double *>(row + (col + 3) * stride))[0] = mx
            (<double *>(row + (col + 4) * stride))[0] = last
            (<double *>(row + (col + 5) * stride))[0] = <double>nd
            col += 6
        return 0

    def read(self, entity, int64_t ts_ms, event=None, int64_t horizon_ms=_NO_TS):
        """One event's window row and the entity's previous event time, changing nothing:
        the entity as held (or empty), without its tiles ending at or before `horizon_ms`,
        with `event` ``(value, distinct)`` folded in at `ts_ms` when given (online scoring)."""
        cdef vector[sw_tile] scratch
        cdef vector[sw_tile] *held
        cdef int64_t prev = _NO_TS, start
        cdef size_t k
        cdef int err = 0
        cdef int32_t did = 0
        cdef double value
        cdef double[::1] row
        self._enter()
        found = self._ids.get(entity)
        if found is not None:
            held = &self._tiles[<int32_t>found]
            prev = self._last[<int32_t>found]
            scratch.reserve(held.size() + 1)
            for k in range(held.size()):
                if not sw_ends_by(deref(held)[k].start, self.tile_ms, horizon_ms):
                    scratch.push_back(deref(held)[k])
                    if sw_tile_copy(&scratch.back(), &deref(held)[k]) < 0:
                        err = SW_NOMEM
                        break
        try:
            if err:
                _raise(err)
            if event is not None:
                value = float(event[0])
                if not sw_tile_start(ts_ms, self.tile_ms, &start):
                    raise OverflowError(f"event time {ts_ms}: its tile starts before -2**63")
                if self.has_distinct:
                    vid = self._vals.get(event[1])
                    # a value no tile holds counts as one more, whatever its id
                    did = len(self._val_objs) if vid is None else vid
                    if self._stamp.size() < <size_t>did + 1:
                        self._stamp.resize(did + 1, 0)
                err = self._fold(&scratch, -1, ts_ms, start, value, did)
                if err:
                    _raise(err)
            out = np.empty(self._nw * 6)
            row = out
            if self._nw:
                err = self._read(&scratch, ts_ms, <char *>&row[0], row.strides[0])
                if err:
                    _raise(err)
            return out, prev
        finally:
            for k in range(scratch.size()):
                sw_tile_free(&scratch[k])

    def last_ts(self, entity):
        self._enter()
        found = self._ids.get(entity)
        return NO_TS if found is None else self._last[<int32_t>found]

    def expire(self, int64_t horizon_ms):
        """Drop every tile ending at or before `horizon_ms`; forget entities with none left."""
        cdef cmap[int64_t, vector[int32_t]].iterator it
        cdef int32_t eid
        self._enter()
        while not self._buckets.empty():
            it = self._buckets.begin()
            if not sw_ends_by(deref(it).first, self.tile_ms, horizon_ms):
                break
            for eid in deref(it).second:
                if self._alive[eid]:
                    self._drop(eid, horizon_ms)
            self._buckets.erase(it)
        for eid in self._empty:
            if self._alive[eid] and self._tiles[eid].empty():
                self._forget(eid)
        self._empty.clear()
        self._release_values()

    # -- output ---------------------------------------------------------------------------------

    cdef object _distinct_of(self, sw_tile *t):
        if not self.has_distinct:
            return None
        cdef vector[int32_t] ids
        cdef uint32_t k, nd = sw_nd(t)
        cdef int32_t one[2]
        cdef int32_t *held = sw_ids(t, one)
        if nd == 1:
            return (self._val_objs[held[0]],)
        ids.assign(held, held + nd)
        sw_sort_ids(ids.data(), ids.size(), self._val_keys)
        return tuple([self._val_objs[ids[k]] for k in range(nd)])

    cdef tuple _tile_of(self, sw_tile *t):
        return (t.count, t.sum, t.min, t.max, t.last_ts, t.last, self._distinct_of(t))

    cdef sw_tile *_find(self, int32_t eid, int64_t start) noexcept:
        cdef vector[sw_tile] *tiles = &self._tiles[eid]
        cdef size_t k
        for k in range(tiles.size()):
            if deref(tiles)[k].start == start:
                return &deref(tiles)[k]
        return NULL

    cdef vector[sw_dirty] _take_dirty(self) except *:
        """The dirty tiles, sorted by (entity, start), once each, as (current id or -1, start),
        their dirty marks cleared."""
        cdef vector[sw_dirty] dirty, out
        cdef size_t k
        cdef sw_dirty d, o
        cdef int32_t cur
        cdef sw_tile *t
        self._enter()
        dirty.swap(self._dirty)
        sw_sort_dirty(dirty, self._keys)
        for k in range(dirty.size()):
            d = dirty[k]
            if k and d.start == dirty[k - 1].start and \
                    self._keys[d.eid] == self._keys[dirty[k - 1].eid]:
                continue
            if self._alive[d.eid]:
                cur = d.eid
            else:  # forgotten since; maybe loaded again under another id
                found = self._ids.get(self._names[d.eid])
                cur = -1 if found is None else found
            o.start = d.start
            o.eid = -1 - d.eid  # < 0: no tile; its entity is the one of id -1 - eid
            if cur >= 0:
                t = self._find(cur, d.start)
                if t != NULL:
                    sw_clear_dirty(t)
                    o.eid = cur
                else:
                    o.eid = -1 - cur
            out.push_back(o)
        return out

    cdef void _recycle_ids(self):
        cdef int32_t eid
        for eid in self._pending_ids:
            self._names[eid] = None
            self._keys[eid] = string()
            self._free_ids.push_back(eid)
        self._pending_ids.clear()

    def drain(self):
        """Tiles changed since the last drain, sorted: ``(entity, start, tile)`` where tile is
        ``(count, sum, min, max, last_ts, last, sorted distinct tuple | None)``, or None for a
        dropped one."""
        cdef vector[sw_dirty] dirty = self._take_dirty()
        cdef size_t k
        cdef sw_dirty d
        out = []
        for k in range(dirty.size()):
            d = dirty[k]
            if d.eid >= 0:
                out.append((self._names[d.eid], d.start,
                            self._tile_of(self._find(d.eid, d.start))))
            else:
                out.append((self._names[-1 - d.eid], d.start, None))
        self._recycle_ids()
        return out

    def drain_packed(self, bytes table_prefix):
        """`drain` as store writes: ``(key, value | None)`` with the bytes
        ``engine.state.layout.tile_key(table_prefix, entity.encode(), start)`` and
        ``pack_tile(tile)`` give them."""
        cdef vector[sw_dirty] dirty = self._take_dirty()
        cdef size_t k
        cdef uint32_t j
        cdef sw_dirty d
        cdef int32_t eid
        cdef sw_tile *t
        cdef string key, value
        cdef vector[int32_t] ids
        cdef uint32_t nd
        cdef int32_t one[2]
        cdef int32_t *held
        cdef const char *prefix = table_prefix
        cdef Py_ssize_t plen = len(table_prefix)
        out = []
        try:
            for k in range(dirty.size()):
                d = dirty[k]
                eid = d.eid if d.eid >= 0 else -1 - d.eid
                if not self._strict[eid]:
                    self._names[eid].encode()  # raises UnicodeEncodeError, as layout would
                if self._keys[eid].size() > 0xFFFF:
                    raise ValueError(f"entity key of {self._keys[eid].size()} bytes")
                key.assign(prefix, plen)
                sw_put_u16(key, self._keys[eid].size())
                key.append(self._keys[eid])
                sw_put_u64be(key, <unsigned long long>d.start ^ (<unsigned long long>1 << 63))
                if d.eid < 0:
                    out.append((PyBytes_FromStringAndSize(key.data(), key.size()), None))
                    continue
                t = self._find(d.eid, d.start)
                value.clear()
                sw_put_u64le(value, <unsigned long long>t.count)
                sw_put_u64le(value, sw_bits(t.sum))
                sw_put_u64le(value, sw_bits(t.min))
                sw_put_u64le(value, sw_bits(t.max))
                sw_put_u64le(value, <unsigned long long>t.last_ts)
                sw_put_u64le(value, sw_bits(t.last))
                nd = sw_nd(t)
                if nd > 0xFFFF:
                    raise ValueError(f"{nd} distinct values in one tile (at most 65,535)")
                sw_put_u16(value, nd)
                if nd:
                    held = sw_ids(t, one)
                    ids.assign(held, held + nd)
                    sw_sort_ids(ids.data(), ids.size(), self._val_keys)
                    for j in range(nd):
                        if not self._val_strict[ids[j]]:
                            self._val_objs[ids[j]].encode()  # raises, as layout would
                        if self._val_keys[ids[j]].size() > 0xFFFF:
                            raise ValueError("a distinct value past 65,535 bytes")
                        sw_put_u16(value, self._val_keys[ids[j]].size())
                        value.append(self._val_keys[ids[j]])
                out.append((PyBytes_FromStringAndSize(key.data(), key.size()),
                            PyBytes_FromStringAndSize(value.data(), value.size())))
        finally:
            self._recycle_ids()
        return out

    def snapshot(self, entity):
        """The entity's newest event time and tiles (as `drain` gives them), oldest first."""
        cdef vector[sw_pair] order
        cdef vector[sw_tile] *tiles
        cdef size_t k
        cdef sw_tile *t
        self._enter()
        found = self._ids.get(entity)
        if found is None:
            return None
        tiles = &self._tiles[<int32_t>found]
        for k in range(tiles.size()):
            order.push_back(sw_pair(deref(tiles)[k].start, k))
        sw_sort_by_start(order)
        out = []
        for k in range(order.size()):
            t = &deref(tiles)[order[k].second]
            out.append((t.start, t.count, t.sum, t.min, t.max, t.last_ts, t.last,
                        self._distinct_of(t)))
        return self._last[<int32_t>found], out

    def memory_bytes(self):
        """Bytes the C++ side holds (tiles, their id arrays, the expiry index), not counting
        the Python str keys and values it refers to."""
        cdef size_t total = 0, e, k
        self._enter()
        for e in range(self._tiles.size()):
            total += self._tiles[e].capacity() * sizeof(sw_tile) + sizeof(vector[sw_tile])
            for k in range(self._tiles[e].size()):
                total += sw_id_bytes(&self._tiles[e][k])
        for b in self._buckets:
            total += b.second.capacity() * sizeof(int32_t) + 64  # a map node, roughly
        return total
