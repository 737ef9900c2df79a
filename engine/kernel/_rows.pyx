# cython: language_level=3, boundscheck=False, wraparound=False, cdivision=True
"""Row-level glue, compiled: decision encoding and the dedup filter.

Decision encoding: a batch's decision documents written straight from its columns.

`encode_decisions` gives, per row, exactly the JSON of `engine.pipeline.decide.decision_doc`
(same keys in the same order, the same values: JSON numbers that read back as the same
doubles, strings escaped as JSON requires), with its `decision_id` (BLAKE2b-128, RFC 7693, of
``event_id \\x1f model \\x1f feature_set``), plus the state values that carry it: the dedup entry
(`layout.pack_seen`) and the entity record (`layout.pack_entity`). `decision_id` is exposed
for tests. The plain-Python path in `engine.pipeline.decide` is the reference it is tested
against (tests/unit/test_encode.py).

The dedup filter (`SeenFilter`): which event ids may have been seen, so that the ids never
seen (nearly all of them) need no store read.

`murmur2_partition`: Kafka's default partitioner (the Java client's murmur2), which the
pipeline asks of every record to find the ones on another partition than their entity's.
"""

from cpython.bytes cimport PyBytes_FromStringAndSize
from libc.stdint cimport int64_t, uint8_t, uint64_t
from libc.stdlib cimport calloc, free, realloc
from libc.string cimport memcpy, memset

import struct

import orjson

# -- BLAKE2b (RFC 7693), 16-byte digest, no key ----------------------------------------------

cdef uint64_t[8] _IV = [
    0x6a09e667f3bcc908ULL, 0xbb67ae8584caa73bULL, 0x3c6ef372fe94f82bULL, 0xa54ff53a5f1d36f1ULL,
    0x510e527fade682d1ULL, 0x9b05688c2b3e6c1fULL, 0x1f83d9abfb41bd6bULL, 0x5be0cd19137e2179ULL]

cdef uint8_t[12][16] _SIGMA = [
    [0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15],
    [14, 10, 4, 8, 9, 15, 13, 6, 1, 12, 0, 2, 11, 7, 5, 3],
    [11, 8, 12, 0, 5, 2, 15, 13, 10, 14, 3, 6, 7, 1, 9, 4],
    [7, 9, 3, 1, 13, 12, 11, 14, 2, 6, 5, 10, 4, 0, 15, 8],
    [9, 0, 5, 7, 2, 4, 10, 15, 14, 1, 11, 12, 6, 8, 3, 13],
    [2, 12, 6, 10, 0, 11, 8, 3, 4, 13, 7, 5, 15, 14, 1, 9],
    [12, 5, 1, 15, 14, 13, 4, 10, 0, 7, 6, 3, 9, 2, 8, 11],
    [13, 11, 7, 14, 12, 1, 3, 9, 5, 0, 15, 4, 8, 6, 2, 10],
    [6, 15, 14, 9, 11, 3, 0, 8, 12, 2, 13, 7, 1, 4, 10, 5],
    [10, 2, 8, 4, 7, 6, 1, 5, 15, 11, 9, 14, 3, 12, 13, 0],
    [0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15],
    [14, 10, 4, 8, 9, 15, 13, 6, 1, 12, 0, 2, 11, 7, 5, 3]]


cdef inline uint64_t _rotr(uint64_t x, int n) noexcept nogil:
    return (x >> n) | (x << (64 - n))


cdef inline void _g(uint64_t* v, int a, int b, int c, int d, uint64_t x, uint64_t y) noexcept nogil:
    v[a] = v[a] + v[b] + x
    v[d] = _rotr(v[d] ^ v[a], 32)
    v[c] = v[c] + v[d]
    v[b] = _rotr(v[b] ^ v[c], 24)
    v[a] = v[a] + v[b] + y
    v[d] = _rotr(v[d] ^ v[a], 16)
    v[c] = v[c] + v[d]
    v[b] = _rotr(v[b] ^ v[c], 63)


cdef void _compress(uint64_t* h, const uint8_t* block, uint64_t t, bint last) noexcept nogil:
    cdef uint64_t v[16]
    cdef uint64_t m[16]
    cdef int i, j
    for i in range(16):
        m[i] = 0
        for j in range(8):
            m[i] |= (<uint64_t>block[i * 8 + j]) << (8 * j)
    for i in range(8):
        v[i] = h[i]
        v[i + 8] = _IV[i]
    v[12] ^= t
    if last:
        v[14] = ~v[14]
    for i in range(12):
        _g(v, 0, 4, 8, 12, m[_SIGMA[i][0]], m[_SIGMA[i][1]])
        _g(v, 1, 5, 9, 13, m[_SIGMA[i][2]], m[_SIGMA[i][3]])
        _g(v, 2, 6, 10, 14, m[_SIGMA[i][4]], m[_SIGMA[i][5]])
        _g(v, 3, 7, 11, 15, m[_SIGMA[i][6]], m[_SIGMA[i][7]])
        _g(v, 0, 5, 10, 15, m[_SIGMA[i][8]], m[_SIGMA[i][9]])
        _g(v, 1, 6, 11, 12, m[_SIGMA[i][10]], m[_SIGMA[i][11]])
        _g(v, 2, 7, 8, 13, m[_SIGMA[i][12]], m[_SIGMA[i][13]])
        _g(v, 3, 4, 9, 14, m[_SIGMA[i][14]], m[_SIGMA[i][15]])
    for i in range(8):
        h[i] ^= v[i] ^ v[i + 8]


cdef void _blake2b_128_hex(const uint8_t* data, Py_ssize_t n, char* out) noexcept nogil:
    """32 lowercase hex characters of BLAKE2b with a 16-byte digest."""
    cdef uint64_t h[8]
    cdef uint8_t block[128]
    cdef Py_ssize_t pos = 0
    cdef uint64_t t = 0
    cdef int i
    cdef uint8_t byte
    cdef const char* hexd = b"0123456789abcdef"
    for i in range(8):
        h[i] = _IV[i]
    h[0] ^= 0x01010000ULL ^ 16  # depth 1, fanout 1, no key, 16-byte digest
    while n - pos > 128:
        t += 128
        _compress(h, data + pos, t, 0)
        pos += 128
    memset(block, 0, 128)
    memcpy(block, data + pos, n - pos)
    t += <uint64_t>(n - pos)
    _compress(h, block, t, 1)
    for i in range(16):
        byte = <uint8_t>((h[i // 8] >> (8 * (i % 8))) & 0xFF)
        out[2 * i] = hexd[byte >> 4]
        out[2 * i + 1] = hexd[byte & 15]


# -- Kafka's default partitioner --------------------------------------------------------------

def murmur2_partition(const unsigned char[::1] key, int partitions) -> int:
    """The partition the Java client's default partitioner gives `key` among `partitions`:
    ``(murmur2(key) & 0x7fffffff) % partitions`` (Kafka's `Utils.murmur2`, seed 0x9747b28c)."""
    cdef Py_ssize_t n = key.shape[0], i, tail = n & ~3
    cdef unsigned int m = 0x5bd1e995, h = 0x9747b28c ^ <unsigned int>n, k
    if partitions <= 0:
        raise ValueError(f"partitions must be > 0, not {partitions}")
    for i in range(0, tail, 4):
        k = key[i] | (<unsigned int>key[i + 1] << 8) | (<unsigned int>key[i + 2] << 16) | \
            (<unsigned int>key[i + 3] << 24)
        k *= m
        k ^= k >> 24
        k *= m
        h *= m
        h ^= k
    i = n & 3
    if i == 3:
        h ^= <unsigned int>key[tail + 2] << 16
    if i >= 2:
        h ^= <unsigned int>key[tail + 1] << 8
    if i >= 1:
        h ^= key[tail]
        h *= m
    h ^= h >> 13
    h *= m
    h ^= h >> 15
    return (h & 0x7fffffff) % partitions


def decision_id(str event_id, str model_version, str feature_set) -> str:
    """`engine.schemas.decision_id`, compiled."""
    cdef bytes data = f"{event_id}\x1f{model_version}\x1f{feature_set}".encode()
    cdef char out[32]
    _blake2b_128_hex(<const uint8_t*><const char*>data, len(data), out)
    return PyBytes_FromStringAndSize(out, 32).decode()


# -- JSON writing ------------------------------------------------------------------------------

cdef extern from "Python.h":
    bint PyUnicode_IS_COMPACT_ASCII(object o)
    void* PyUnicode_DATA(object o)
    Py_ssize_t PyUnicode_GET_LENGTH(object o)
    char* PyBytes_AS_STRING(object o)


cdef struct _Out:
    char* p
    Py_ssize_t n, cap


cdef int _grow(_Out* o, Py_ssize_t need) except -1:
    cdef Py_ssize_t cap = o.cap
    cdef char* q
    if o.n + need <= cap:
        return 0
    while cap < o.n + need:
        cap = cap * 2 if cap else 4096
    q = <char*>realloc(o.p, cap)
    if q is NULL:
        raise MemoryError()
    o.p, o.cap = q, cap
    return 0


cdef inline int _put(_Out* o, const char* s, Py_ssize_t k) except -1:
    _grow(o, k)
    memcpy(o.p + o.n, s, k)
    o.n += k
    return 0


cdef inline int _putb(_Out* o, bytes s) except -1:
    return _put(o, PyBytes_AS_STRING(s), len(s))


cdef int _str(_Out* o, str s) except -1:
    """A JSON string: copied as is when plain ASCII, else escaped by orjson."""
    cdef Py_ssize_t k, i
    cdef const char* d
    cdef char c
    if PyUnicode_IS_COMPACT_ASCII(s):
        k = PyUnicode_GET_LENGTH(s)
        d = <const char*>PyUnicode_DATA(s)
        for i in range(k):
            c = d[i]
            if c < 0x20 or c == 0x22 or c == 0x5c or c == 0x7f:
                break
        else:
            _grow(o, k + 2)
            o.p[o.n] = 0x22
            memcpy(o.p + o.n + 1, d, k)
            o.p[o.n + 1 + k] = 0x22
            o.n += k + 2
            return 0
    return _putb(o, orjson.dumps(s))


cdef int _int(_Out* o, int64_t v) except -1:
    cdef char buf[24]
    cdef int k = 0, i
    cdef uint64_t u
    cdef bint neg = v < 0
    u = <uint64_t>(-(v + 1)) + 1 if neg else <uint64_t>v
    if u == 0:
        buf[0] = 0x30
        k = 1
    while u:
        buf[k] = <char>(0x30 + u % 10)
        u //= 10
        k += 1
    _grow(o, k + 1)
    if neg:
        o.p[o.n] = 0x2d
        o.n += 1
    for i in range(k):
        o.p[o.n + i] = buf[k - 1 - i]
    o.n += k
    return 0


cdef int _value(_Out* o, object v) except -1:
    """A feature value as the topology's function returned it."""
    if v is None:
        return _put(o, b"null", 4)
    if v is True:
        return _put(o, b"true", 4)
    if v is False:
        return _put(o, b"false", 5)
    if type(v) is int and -(1 << 62) < v < (1 << 62):
        return _int(o, v)
    return _putb(o, orjson.dumps(v))


cdef Py_ssize_t[:, ::1] _number_spans(bytes doc, Py_ssize_t rows, Py_ssize_t cols) except *:
    """(start, end) of each number of orjson's ``[[..],[..]]`` (or ``[..]`` when `cols` is 0)
    text: numbers hold no comma or bracket, so commas and brackets cut them."""
    cdef Py_ssize_t[:, ::1] spans = (
        __import__("numpy").empty((rows * max(cols, 1), 2), dtype="intp"))
    cdef const char* d = PyBytes_AS_STRING(doc)
    cdef Py_ssize_t n = len(doc), i = 0, k = 0, start = -1
    cdef char c
    for i in range(n):
        c = d[i]
        if c == 0x2c or c == 0x5b or c == 0x5d:
            if start >= 0:
                spans[k, 0] = start
                spans[k, 1] = i
                k += 1
                start = -1
        elif start < 0:
            start = i
    if k != rows * max(cols, 1):
        raise ValueError(f"expected {rows * max(cols, 1)} numbers, found {k}")
    return spans


_SEEN_HEAD = struct.Struct("<qiq?").pack
_ENTITY_HEAD = struct.Struct("<q").pack


def encode_decisions(list eids, list keys, const long long[::1] ts_ms, list scores,
                     list decisions, list models, list paths, list reasons,
                     tuple names, const double[:, ::1] matrix, bytes kinds, list objects,
                     str feature_set, bytes stage_json, int64_t now_ms,
                     const long long[::1] partitions, const long long[::1] offsets, list late,
                     const long long[::1] last_ts, list shadows=None, list contexts=None):
    """(decisions, seen values, entity values): the decision JSON of each row, its dedup entry
    and its entity record.

    `kinds[j]` says how feature column j is written: ``f`` a float (NaN: null), ``i`` an
    integer count, ``o`` the object in ``objects[j][row]`` as a topology function returned it.
    `reasons[i]` are the row's notes and verdict reasons together; `scores[i]` may be None.
    `last_ts[i]` is the entity's newest event time after the batch (NO_TS: none). Floats are
    written by orjson (shortest text that reads back as the same double), one call a batch.
    `shadows[i]` (when given and not None) is the row's rollout shadow, a dict written as the
    ``shadow`` field after ``features``; without it the document has no such field.
    `contexts[i]` (when given) is the row's ``context`` field, already JSON, written next.
    """
    cdef Py_ssize_t n = len(eids), f = len(names), i, j, a, b, k
    cdef _Out o
    cdef char idhex[32]
    cdef bytes idsrc, body, head, fs_tail = ("\x1f" + feature_set).encode()
    cdef list out_decisions = [], out_seen = [], out_entity = []
    cdef list name_keys = [orjson.dumps(nm) + b":" for nm in names]
    cdef const unsigned char* kind = kinds
    cdef bytes numbers = orjson.dumps(__import__("numpy").asarray(matrix),
                                      option=orjson.OPT_SERIALIZE_NUMPY) if n and f else b""
    cdef bytes score_text = orjson.dumps(scores)
    cdef Py_ssize_t[:, ::1] nums = _number_spans(numbers, n, f) if n and f else None
    cdef Py_ssize_t[:, ::1] score_spans = _number_spans(score_text, n, 0) if n else None
    cdef const char* num_p = PyBytes_AS_STRING(numbers)
    cdef const char* score_p = PyBytes_AS_STRING(score_text)
    cdef object r
    o.p, o.n, o.cap = NULL, 0, 0
    try:
        for i in range(n):
            o.n = 0
            _put(&o, b'{"decision_id":"', 16)
            idsrc = (<str>eids[i]).encode() + b"\x1f" + (<str>models[i]).encode() + fs_tail
            _blake2b_128_hex(<const uint8_t*>PyBytes_AS_STRING(idsrc), len(idsrc), idhex)
            _put(&o, idhex, 32)
            _put(&o, b'","event_id":', 13)
            _str(&o, eids[i])
            _put(&o, b',"key":', 7)
            _str(&o, keys[i])
            _put(&o, b',"score":', 9)
            a, b = score_spans[i, 0], score_spans[i, 1]
            _put(&o, score_p + a, b - a)
            _put(&o, b',"decision":', 12)
            _str(&o, decisions[i])
            _put(&o, b',"model":', 9)
            _str(&o, models[i])
            _put(&o, b',"path":', 8)
            _str(&o, paths[i])
            _put(&o, b',"reasons":[', 12)
            k = 0
            for r in reasons[i]:
                if k:
                    _put(&o, b",", 1)
                _str(&o, r)
                k += 1
            _put(&o, b'],"features":{', 14)
            for j in range(f):
                if j:
                    _put(&o, b",", 1)
                _putb(&o, name_keys[j])
                if kind[j] == 0x69:  # 'i': a count
                    _int(&o, <int64_t>matrix[i, j])
                elif kind[j] == 0x66:  # 'f': orjson's text of the number, or null
                    a, b = nums[i * f + j, 0], nums[i * f + j, 1]
                    _put(&o, num_p + a, b - a)
                else:
                    _value(&o, objects[j][i])
            _put(&o, b"}", 1)
            if shadows is not None and shadows[i] is not None:
                _put(&o, b',"shadow":', 10)
                _putb(&o, orjson.dumps(shadows[i]))
            if contexts is not None:
                _put(&o, b',"context":', 11)
                _putb(&o, contexts[i])
            _put(&o, b',"stage_ms":', 12)
            _putb(&o, stage_json)
            _put(&o, b',"event_ts_ms":', 15)
            _int(&o, ts_ms[i])
            _put(&o, b',"decided_at_ms":', 17)
            _int(&o, now_ms)
            _put(&o, b"}", 1)
            body = PyBytes_FromStringAndSize(o.p, o.n)
            out_decisions.append(body)
            head = _SEEN_HEAD(ts_ms[i], partitions[i], offsets[i], late[i])
            out_seen.append(head + body)
            out_entity.append(_ENTITY_HEAD(last_ts[i]) + body)
    finally:
        free(o.p)
    return out_decisions, out_seen, out_entity


# -- the dedup filter -------------------------------------------------------------------------

cdef inline uint64_t _mix(uint64_t x) noexcept nogil:
    """splitmix64's finaliser: a well spread second hash from the first."""
    x ^= x >> 30
    x *= 0xbf58476d1ce4e5b9ULL
    x ^= x >> 27
    x *= 0x94d049bb133111ebULL
    x ^= x >> 31
    return x


cdef class _Bloom:
    cdef uint64_t* bits
    cdef uint64_t nbits
    cdef Py_ssize_t count, capacity

    def __cinit__(self, Py_ssize_t capacity):
        self.capacity = capacity
        self.nbits = <uint64_t>capacity * 10  # ~1% false positives at capacity (k = 7)
        self.nbits = ((self.nbits + 63) // 64) * 64
        self.bits = <uint64_t*>calloc(self.nbits // 64, 8)
        if self.bits is NULL:
            raise MemoryError()
        self.count = 0

    def __dealloc__(self):
        free(self.bits)

    cdef inline void add(self, uint64_t h1, uint64_t h2) noexcept:
        cdef int i
        cdef uint64_t b
        for i in range(7):
            b = (h1 + <uint64_t>i * h2) % self.nbits
            self.bits[b >> 6] |= (<uint64_t>1) << (b & 63)
        self.count += 1

    cdef inline bint has(self, uint64_t h1, uint64_t h2) noexcept:
        cdef int i
        cdef uint64_t b
        for i in range(7):
            b = (h1 + <uint64_t>i * h2) % self.nbits
            if not (self.bits[b >> 6] >> (b & 63)) & 1:
                return False
        return True


cdef class SeenFilter:
    """Event ids added within the dedup TTL, in Bloom filters by generation of event time.

    `maybe(ids)` is False only for an id never added (or added to a generation since
    dropped): such an id needs no store read. True may be a false positive (about 1%), to be
    checked against the store. A generation covers `span_ms` of event time and is dropped once
    every id it holds is older than the TTL, so an id is remembered at least `ttl_ms` past its
    time. A generation grows by segments, each twice the last, as ids come (no rate to
configure); past
    `max_bytes` it stops growing and answers True for everything it might hold, so memory is
    bounded and the answers stay right (only slower). Ids are hashed with Python's string hash:
    the filter lives in one process and is rebuilt from the store when a partition opens.
    """

    cdef int64_t ttl_ms, span_ms
    cdef list generations  # [start_ms, end_ms, list of _Bloom, saturated], oldest first
    cdef Py_ssize_t max_bytes, bytes_used, _segment

    def __init__(self, int64_t ttl_ms, Py_ssize_t max_bytes=64 << 20,
                 Py_ssize_t segment_ids=1 << 16):
        if ttl_ms <= 0:
            raise ValueError("ttl_ms must be > 0")
        self.ttl_ms = ttl_ms
        self.span_ms = max(ttl_ms // 4, 1)
        self.generations = []
        self.max_bytes = max_bytes
        self.bytes_used = 0
        self._segment = segment_ids

    @property
    def nbytes(self) -> int:
        return self.bytes_used

    cdef list _generation(self, int64_t ts):
        cdef list g
        cdef int64_t start
        for g in self.generations:
            if g[0] <= ts < g[1]:
                return g
        start = ts - (((ts % self.span_ms) + self.span_ms) % self.span_ms)  # floor
        g = [start, start + self.span_ms, [], False]
        self.generations.append(g)
        self.generations.sort(key=_first)
        return g

    def add(self, list ids, const long long[::1] ts_ms) -> None:
        """Remember each id under its event time."""
        cdef Py_ssize_t i
        cdef list g, segments
        cdef _Bloom seg
        cdef uint64_t h1
        cdef Py_ssize_t size
        for i in range(len(ids)):
            g = self._generation(ts_ms[i])
            if g[3]:
                continue  # saturated: it answers True anyway
            segments = g[2]
            seg = segments[len(segments) - 1] if segments else None
            if seg is None or seg.count >= seg.capacity:
                # each segment twice the last: few segments to probe, whatever the rate
                size = self._segment if seg is None else 2 * seg.capacity
                if self.bytes_used + size * 10 // 8 > self.max_bytes:
                    g[3] = True
                    continue
                seg = _Bloom(size)
                self.bytes_used += seg.nbits // 8
                segments.append(seg)
            h1 = <uint64_t>hash(ids[i])
            seg.add(h1, _mix(h1) | 1)

    def maybe(self, list ids) -> list:
        """Per id: False when surely never added, True when it may have been."""
        cdef Py_ssize_t i
        cdef list out = [False] * len(ids), g
        cdef _Bloom seg
        cdef uint64_t h1, h2
        cdef bint found
        for i in range(len(ids)):
            h1 = <uint64_t>hash(ids[i])
            h2 = _mix(h1) | 1
            found = False
            for g in self.generations:
                if g[3]:
                    found = True
                    break
                for seg in g[2]:
                    if seg.has(h1, h2):
                        found = True
                        break
                if found:
                    break
            out[i] = found
        return out

    def expire(self, int64_t watermark_ms) -> None:
        """Drop the generations whose every id has outlived the TTL at this watermark (the
        rule of `engine.dedup.Dedup.expired`, applied to the newest time a generation holds)."""
        cdef list keep = []
        cdef list g
        cdef _Bloom seg
        for g in self.generations:
            if max(<int64_t>g[1] - 1, 0) < watermark_ms - self.ttl_ms:
                for seg in g[2]:
                    self.bytes_used -= seg.nbits // 8
            else:
                keep.append(g)
        self.generations = keep


def _first(list g):
    return g[0]
