/* gguf_strings.c - GGUF string arrays: a checked scan of length-prefixed string arrays, and a byte-level BPE
 * merger built from a vocabulary's `tokenizer.ggml.tokens` / `tokenizer.ggml.merges` string arrays.
 *
 * SentencePiece semantics (llama.cpp's SPM tokenizer, as moe_gguf/tokenizer.py's Python merger): symbols start
 * as the UTF-8 characters of an (already escaped) piece; the adjacent pair whose concatenation is a vocabulary
 * entry of highest score (leftmost on ties) is merged until none is left; each final symbol is its token or, when
 * it is none, the byte tokens of its bytes.
 *
 * BPE semantics (llama.cpp's byte-level BPE, as moe_gguf/tokenizer.py's Python merger):
 *  - tokens and merge halves are byte-level strings (GPT-2's byte -> printable character table); they are
 *    converted to the raw bytes they stand for, so pieces of raw UTF-8 text are merged without re-encoding.
 *    Strings with characters outside that alphabet can never match byte-level text and are left out.
 *  - a merge entry "a b" is split at the first space after its first byte; the first entry of a pair wins.
 *  - per piece: (ignore_merges) a piece that is a vocabulary entry is emitted whole; otherwise the adjacent
 *    pair of lowest merge rank (leftmost on ties) is merged until no ranked pair is left; each final symbol is
 *    its token, or (not a token) the tokens of its single bytes (bytes without one are dropped).
 */
#include <stdlib.h>
#include <string.h>

#include "internal.h"
#include "moe_gguf.h"

/* ------------------------------------------------------------------ string arrays */

static uint64_t load_u64le(const uint8_t *p) {
    uint64_t v = 0;
    for (int k = 7; k >= 0; k--) v = (v << 8) | p[k];
    return v;
}

int64_t mg_gguf_scan_strings(const uint8_t *buf, uint64_t size, uint64_t pos, int64_t count, int64_t *prefix_pos,
                             int64_t *lens, uint64_t *end) {
    int64_t i = 0;
    for (; i < count; i++) {
        if (pos > size || size - pos < 8) break;
        uint64_t n = load_u64le(buf + pos);
        if (n > size - pos - 8) break;
        if (prefix_pos) prefix_pos[i] = (int64_t)pos;
        if (lens) lens[i] = (int64_t)n;
        pos += 8 + n;
    }
    if (end) *end = pos;
    return i;
}

int64_t mg_gguf_join_strings(const uint8_t *buf, uint64_t size, uint64_t pos, int64_t count, uint8_t sep,
                             uint8_t *out, uint64_t out_cap, int *sep_found) {
    uint64_t o = 0;
    int found = 0;
    for (int64_t i = 0; i < count; i++) {
        if (pos > size || size - pos < 8) return -1;
        uint64_t n = load_u64le(buf + pos);
        if (n > size - pos - 8) return -1;
        if (i > 0) {
            if (o >= out_cap) return -1;
            out[o++] = sep;
        }
        if (n > out_cap - o) return -1;
        const uint8_t *s = buf + pos + 8;
        if (!found && memchr(s, sep, (size_t)n)) found = 1;
        memcpy(out + o, s, (size_t)n);
        o += n;
        pos += 8 + n;
    }
    if (sep_found) *sep_found = found;
    return (int64_t)o;
}

/* ------------------------------------------------------------------ hashing */

static uint64_t hash_bytes(const uint8_t *p, int64_t n) {
    uint64_t h = 0x9E3779B97F4A7C15ull ^ (uint64_t)n;
    while (n >= 8) {
        uint64_t w;
        memcpy(&w, p, 8);
        h = (h ^ w) * 0xFF51AFD7ED558CCDull;
        h ^= h >> 32;
        p += 8;
        n -= 8;
    }
    uint64_t w = 0;
    for (int64_t k = 0; k < n; k++) w |= (uint64_t)p[k] << (8 * k);
    h = (h ^ w) * 0xC4CEB9FE1A85EC53ull;
    h ^= h >> 29;
    h *= 0xFF51AFD7ED558CCDull;
    h ^= h >> 32;
    return h;
}

static uint64_t hash_pair(uint64_t k) {
    k ^= k >> 33;
    k *= 0xFF51AFD7ED558CCDull;
    k ^= k >> 33;
    k *= 0xC4CEB9FE1A85EC53ull;
    k ^= k >> 33;
    return k;
}

/* A hash set of byte strings (open addressing, linear probing, grown at half load), each with a token id. */
typedef struct {
    int64_t off; /* into blob */
    int32_t len;
    int32_t tok; /* token id, or -1 (a merge half that is no token) */
    uint64_t hash;
} entry;

typedef struct {
    uint8_t *blob; /* the bytes of every entry */
    int64_t blob_used, blob_cap;
    entry *ents;
    int64_t n_ents, ents_cap;
    int32_t *slots; /* entry index or -1 */
    uint64_t slot_mask;
} strtab;

static void st_free(strtab *t) {
    free(t->blob);
    free(t->ents);
    free(t->slots);
}

/* ents_cap bounds the strings that may be added; the slot table starts at twice `expected` and doubles when half
 * full (the entries' memory is only touched as they are added), so a generous bound costs little. */
static int st_init(strtab *t, int64_t blob_cap, int64_t ents_cap, int64_t expected) {
    memset(t, 0, sizeof *t);
    uint64_t slots = 16;
    while (slots < (uint64_t)expected * 2) slots <<= 1;
    t->blob_cap = blob_cap + 1;
    t->ents_cap = ents_cap;
    t->blob = malloc((size_t)t->blob_cap);
    t->ents = malloc((size_t)ents_cap * sizeof(entry));
    t->slots = malloc((size_t)slots * sizeof(int32_t));
    if (!t->blob || !t->ents || !t->slots) {
        st_free(t);
        return -1;
    }
    memset(t->slots, 0xff, (size_t)slots * sizeof(int32_t));
    t->slot_mask = slots - 1;
    return 0;
}

static int32_t st_find(const strtab *t, const uint8_t *s, int64_t n) {
    uint64_t h = hash_bytes(s, n);
    for (uint64_t i = h & t->slot_mask;; i = (i + 1) & t->slot_mask) {
        int32_t e = t->slots[i];
        if (e < 0) return -1;
        const entry *en = &t->ents[e];
        if (en->hash == h && en->len == n && memcmp(t->blob + en->off, s, (size_t)n) == 0) return e;
    }
}

static int st_grow(strtab *t) {
    uint64_t slots = (t->slot_mask + 1) * 2;
    int32_t *ns = malloc((size_t)slots * sizeof(int32_t));
    if (!ns) return -1;
    memset(ns, 0xff, (size_t)slots * sizeof(int32_t));
    for (int64_t e = 0; e < t->n_ents; e++) {
        uint64_t i = t->ents[e].hash & (slots - 1);
        while (ns[i] >= 0) i = (i + 1) & (slots - 1);
        ns[i] = (int32_t)e;
    }
    free(t->slots);
    t->slots = ns;
    t->slot_mask = slots - 1;
    return 0;
}

/* The entry of string s, which the caller wrote at blob + blob_used (kept there when new), or -1 when out of
 * memory.  The caller sized ents_cap for every string it may add. */
static int32_t st_intern(strtab *t, const uint8_t *s, int64_t n) {
    uint64_t h = hash_bytes(s, n);
    uint64_t i = h & t->slot_mask;
    for (;; i = (i + 1) & t->slot_mask) {
        int32_t e = t->slots[i];
        if (e < 0) break;
        const entry *en = &t->ents[e];
        if (en->hash == h && en->len == n && memcmp(t->blob + en->off, s, (size_t)n) == 0) return e;
    }
    int32_t e = (int32_t)t->n_ents++;
    t->ents[e].off = s - t->blob;
    t->ents[e].len = (int32_t)n;
    t->ents[e].tok = -1;
    t->ents[e].hash = h;
    t->blob_used += n;
    t->slots[i] = e;
    if ((uint64_t)t->n_ents * 2 > t->slot_mask + 1 && st_grow(t) != 0) return -1;
    return e;
}

/* checks a (start, len) string table against INT32 limits; returns the total bytes or -1 */
static int64_t table_bytes(const int64_t *start, const int64_t *len, int64_t n) {
    int64_t total = 0;
    for (int64_t i = 0; i < n; i++) {
        if (start[i] < 0 || len[i] < 0 || len[i] > INT32_MAX) return -1;
        total += len[i];
    }
    return total;
}

/* ------------------------------------------------------------------ byte-level BPE */

typedef struct {
    uint64_t key; /* left entry << 32 | right entry, or UINT64_MAX when empty */
    int32_t rank;
} pair_slot;

struct mg_bpe {
    strtab st;
    pair_slot *pairs; /* merge ranks by (left entry, right entry) */
    uint64_t pair_mask;
    int32_t byte_ent[256]; /* entry of each single raw byte, or -1 */
    int32_t byte_tok[256]; /* token of each single raw byte, or -1 */
    int ignore_merges;
};

static void init_byte_table(int16_t *t) {
    for (int c = 0; c < 0x144; c++) t[c] = -1;
    int n = 0;
    for (int b = 0; b < 256; b++) {
        int keep = (b >= 0x21 && b <= 0x7E) || (b >= 0xA1 && b <= 0xAC) || (b >= 0xAE && b <= 0xFF);
        if (keep) {
            t[b] = (int16_t)b;
        } else {
            t[256 + n] = (int16_t)b;
            n++;
        }
    }
}

/* byte-level UTF-8 string -> raw bytes in out (room for n bytes); returns the raw length, or -1 when a
 * character is outside the byte-level alphabet (or the UTF-8 is malformed). */
static int64_t to_raw(const int16_t *tab, const uint8_t *s, int64_t n, uint8_t *out) {
    int64_t i = 0, o = 0;
    while (i < n) {
        uint32_t c = s[i];
        uint32_t cp;
        if (c < 0x80) {
            cp = c;
            i += 1;
        } else if ((c & 0xE0) == 0xC0 && i + 1 < n && (s[i + 1] & 0xC0) == 0x80) {
            cp = ((c & 0x1F) << 6) | (s[i + 1] & 0x3F);
            i += 2;
        } else {
            return -1;
        }
        if (cp >= 0x144 || tab[cp] < 0) return -1;
        out[o++] = (uint8_t)tab[cp];
    }
    return o;
}

static int32_t pair_lookup(const mg_bpe *b, int32_t l, int32_t r) {
    if (l < 0 || r < 0) return -1;
    uint64_t key = ((uint64_t)(uint32_t)l << 32) | (uint32_t)r;
    for (uint64_t i = hash_pair(key) & b->pair_mask;; i = (i + 1) & b->pair_mask) {
        uint64_t k = b->pairs[i].key;
        if (k == UINT64_MAX) return -1;
        if (k == key) return b->pairs[i].rank;
    }
}

static void pair_insert(mg_bpe *b, int32_t l, int32_t r, int32_t rank) {
    uint64_t key = ((uint64_t)(uint32_t)l << 32) | (uint32_t)r;
    for (uint64_t i = hash_pair(key) & b->pair_mask;; i = (i + 1) & b->pair_mask) {
        uint64_t k = b->pairs[i].key;
        if (k == key) return; /* first entry wins */
        if (k == UINT64_MAX) {
            b->pairs[i].key = key;
            b->pairs[i].rank = rank;
            return;
        }
    }
}

void mg_bpe_free(mg_bpe *b) {
    if (!b) return;
    st_free(&b->st);
    free(b->pairs);
    free(b);
}

mg_bpe *mg_bpe_create(const uint8_t *tok_buf, const int64_t *tok_start, const int64_t *tok_len, int64_t n_tok,
                      const uint8_t *merge_buf, const int64_t *merge_start, const int64_t *merge_len, int64_t n_merge,
                      int ignore_merges) {
    if (n_tok < 0 || n_merge < 0 || n_tok > INT32_MAX / 4 || n_merge > INT32_MAX / 4) return NULL;
    int64_t tb = table_bytes(tok_start, tok_len, n_tok), mb = table_bytes(merge_start, merge_len, n_merge);
    if (tb < 0 || mb < 0) return NULL;
    int16_t tab[0x144]; /* byte-level code point -> raw byte, or -1 */
    init_byte_table(tab);
    mg_bpe *b = calloc(1, sizeof *b);
    if (!b) return NULL;
    b->ignore_merges = ignore_merges != 0;
    uint64_t pairs = 16;
    while (pairs < (uint64_t)n_merge + (uint64_t)n_merge / 2) pairs <<= 1; /* load <= 2/3 */
    b->pairs = malloc((size_t)pairs * sizeof(pair_slot));
    if (!b->pairs || st_init(&b->st, tb + mb + 256, n_tok + 2 * n_merge + 256, n_tok + 256) != 0) {
        free(b->pairs);
        free(b);
        return NULL;
    }
    for (uint64_t i = 0; i < pairs; i++) b->pairs[i].key = UINT64_MAX;
    b->pair_mask = pairs - 1;
    strtab *st = &b->st;

    for (int64_t i = 0; i < n_tok; i++) {
        uint8_t *dst = st->blob + st->blob_used;
        int64_t n = to_raw(tab, tok_buf + tok_start[i], tok_len[i], dst);
        if (n <= 0) continue; /* never matches byte-level text */
        int32_t e = st_intern(st, dst, n);
        if (e < 0) goto oom;
        if (st->ents[e].tok < 0) st->ents[e].tok = (int32_t)i; /* first id wins on duplicates */
    }
    for (int64_t i = 0; i < n_merge; i++) {
        const uint8_t *m = merge_buf + merge_start[i];
        int64_t n = merge_len[i];
        const uint8_t *sp = n > 1 ? memchr(m + 1, ' ', (size_t)(n - 1)) : NULL;
        if (!sp) continue;
        int64_t nl = sp - m, nr = n - nl - 1;
        uint8_t *dl = st->blob + st->blob_used;
        int64_t rl = to_raw(tab, m, nl, dl);
        if (rl <= 0) continue;
        int32_t el = st_intern(st, dl, rl);
        if (el < 0) goto oom;
        uint8_t *dr = st->blob + st->blob_used;
        int64_t rr = to_raw(tab, sp + 1, nr, dr);
        if (rr <= 0) continue;
        int32_t er = st_intern(st, dr, rr);
        if (er < 0) goto oom;
        pair_insert(b, el, er, (int32_t)i);
    }
    for (int c = 0; c < 256; c++) {
        uint8_t ch = (uint8_t)c;
        int32_t e = st_find(st, &ch, 1);
        b->byte_ent[c] = e;
        b->byte_tok[c] = e >= 0 ? st->ents[e].tok : -1;
    }
    return b;
oom:
    mg_bpe_free(b);
    return NULL;
}

/* merge candidates: a max-heap on `key` (BPE: -rank; SPM: score), then the lowest left symbol */
typedef struct {
    float score;
    int32_t rank, left, right, size;
} bigram;

static int bigram_before(const bigram *a, const bigram *b) {
    if (a->score != b->score) return a->score > b->score;
    if (a->rank != b->rank) return a->rank < b->rank;
    return a->left < b->left;
}

static void heap_push(bigram *h, int64_t *n, bigram v) {
    int64_t i = (*n)++;
    while (i > 0) {
        int64_t p = (i - 1) / 2;
        if (!bigram_before(&v, &h[p])) break;
        h[i] = h[p];
        i = p;
    }
    h[i] = v;
}

static bigram heap_pop(bigram *h, int64_t *n) {
    bigram top = h[0];
    bigram v = h[--(*n)];
    int64_t i = 0, m = *n;
    for (;;) {
        int64_t c = 2 * i + 1;
        if (c >= m) break;
        if (c + 1 < m && bigram_before(&h[c + 1], &h[c])) c++;
        if (!bigram_before(&h[c], &v)) break;
        h[i] = h[c];
        i = c;
    }
    if (m > 0) h[i] = v;
    return top;
}

/* per-call scratch: symbols are byte ranges [i, i + len[i]) of the piece, linked by prev/next */
typedef struct {
    int32_t *len, *prev, *next, *ent;
    bigram *heap;
} workspace;

static int ws_alloc(workspace *w, void **mem, const int64_t *piece_off, int64_t n_pieces) {
    int64_t maxlen = 1;
    for (int64_t p = 0; p < n_pieces; p++) {
        int64_t len = piece_off[p + 1] - piece_off[p];
        if (len < 0 || len > INT32_MAX / 4) return MG_ESIZE;
        if (len > maxlen) maxlen = len;
    }
    size_t m = (size_t)maxlen;
    *mem = malloc(m * 4 * sizeof(int32_t) + 3 * m * sizeof(bigram));
    if (!*mem) return MG_ENOMEM;
    w->heap = *mem;
    w->len = (int32_t *)(w->heap + 3 * m);
    w->prev = w->len + m;
    w->next = w->prev + m;
    w->ent = w->next + m;
    return 0;
}

/* pops candidates until one is still valid (both symbols unchanged and adjacent), merges its right symbol into
 * its left one and returns the left one; -1 when the heap is empty */
static int32_t merge_next(workspace *w, int64_t *nh) {
    while (*nh > 0) {
        bigram g = heap_pop(w->heap, nh);
        int32_t l = g.left, r = g.right;
        if (w->len[l] == 0 || w->len[r] == 0 || w->next[l] != r || w->len[l] + w->len[r] != g.size) continue;
        w->len[l] += w->len[r];
        w->len[r] = 0;
        w->next[l] = w->next[r];
        if (w->next[r] >= 0) w->prev[w->next[r]] = l;
        return l;
    }
    return -1;
}

typedef int64_t (*piece_fn)(const void *model, workspace *w, const uint8_t *s, int32_t n, int32_t *out);

/* runs `piece` over every piece with one scratch allocation (see mg_bpe_encode) */
static int64_t encode_all(const void *model, piece_fn piece, const uint8_t *text, const int64_t *piece_off,
                          int64_t n_pieces, int32_t *out_ids, int64_t *out_off) {
    if (!model || n_pieces < 0) return MG_ESIZE;
    workspace w;
    void *mem = NULL;
    int rc = ws_alloc(&w, &mem, piece_off, n_pieces);
    if (rc != 0) return rc;
    int64_t o = 0;
    out_off[0] = 0;
    for (int64_t p = 0; p < n_pieces; p++) {
        int32_t len = (int32_t)(piece_off[p + 1] - piece_off[p]);
        if (len > 0) o += piece(model, &w, text + piece_off[p], len, out_ids + o);
        out_off[p + 1] = o;
    }
    free(mem);
    return o;
}

static void bpe_try_pair(const mg_bpe *b, workspace *w, int64_t *nh, int32_t l, int32_t r) {
    if (l < 0 || r < 0) return;
    int32_t rank = pair_lookup(b, w->ent[l], w->ent[r]);
    if (rank < 0) return;
    bigram g = {0.0f, rank, l, r, w->len[l] + w->len[r]};
    heap_push(w->heap, nh, g);
}

static int64_t bpe_piece(const void *model, workspace *w, const uint8_t *s, int32_t n, int32_t *out) {
    const mg_bpe *b = model;
    const strtab *st = &b->st;
    int64_t o = 0;
    if (b->ignore_merges) {
        int32_t e = st_find(st, s, n);
        if (e >= 0 && st->ents[e].tok >= 0) {
            out[0] = st->ents[e].tok;
            return 1;
        }
    }
    for (int32_t i = 0; i < n; i++) {
        w->len[i] = 1;
        w->prev[i] = i - 1;
        w->next[i] = i + 1 < n ? i + 1 : -1;
        w->ent[i] = b->byte_ent[s[i]];
    }
    int64_t nh = 0;
    for (int32_t i = 0; i + 1 < n; i++) bpe_try_pair(b, w, &nh, i, i + 1);
    for (int32_t l; (l = merge_next(w, &nh)) >= 0;) {
        w->ent[l] = st_find(st, s + l, w->len[l]);
        bpe_try_pair(b, w, &nh, w->prev[l], l);
        bpe_try_pair(b, w, &nh, l, w->next[l]);
    }
    for (int32_t i = 0; i != -1; i = w->next[i]) {
        int32_t e = w->ent[i];
        if (e >= 0 && st->ents[e].tok >= 0) {
            out[o++] = st->ents[e].tok;
        } else {
            for (int32_t k = 0; k < w->len[i]; k++) {
                int32_t t = b->byte_tok[s[i + k]];
                if (t >= 0) out[o++] = t;
            }
        }
    }
    return o;
}

int64_t mg_bpe_encode(const mg_bpe *b, const uint8_t *text, const int64_t *piece_off, int64_t n_pieces,
                      int32_t *out_ids, int64_t *out_off) {
    return encode_all(b, bpe_piece, text, piece_off, n_pieces, out_ids, out_off);
}

/* ------------------------------------------------------------------ SentencePiece-style */

struct mg_spm {
    strtab st;
    float *scores; /* per entry (the score of its token) */
    int32_t byte_tok[256];
};

void mg_spm_free(mg_spm *m) {
    if (!m) return;
    st_free(&m->st);
    free(m->scores);
    free(m);
}

mg_spm *mg_spm_create(const uint8_t *tok_buf, const int64_t *tok_start, const int64_t *tok_len, int64_t n_tok,
                      const float *scores, const int32_t *byte_tok) {
    if (n_tok < 0 || n_tok > INT32_MAX / 4) return NULL;
    int64_t tb = table_bytes(tok_start, tok_len, n_tok);
    if (tb < 0) return NULL;
    mg_spm *m = calloc(1, sizeof *m);
    if (!m) return NULL;
    m->scores = malloc((size_t)(n_tok + 1) * sizeof(float));
    if (!m->scores || st_init(&m->st, tb, n_tok + 1, n_tok + 1) != 0) {
        free(m->scores);
        free(m);
        return NULL;
    }
    strtab *st = &m->st;
    for (int64_t i = 0; i < n_tok; i++) {
        int64_t n = tok_len[i];
        if (n == 0) continue;
        uint8_t *dst = st->blob + st->blob_used;
        memcpy(dst, tok_buf + tok_start[i], (size_t)n);
        int32_t e = st_intern(st, dst, n);
        if (e < 0) {
            mg_spm_free(m);
            return NULL;
        }
        if (st->ents[e].tok < 0) { /* first id wins on duplicates */
            st->ents[e].tok = (int32_t)i;
            m->scores[e] = scores ? scores[i] : 0.0f;
        }
    }
    for (int c = 0; c < 256; c++) m->byte_tok[c] = byte_tok[c];
    return m;
}

static void spm_try_pair(const mg_spm *m, workspace *w, int64_t *nh, const uint8_t *s, int32_t l, int32_t r) {
    if (l < 0 || r < 0) return;
    int32_t size = w->len[l] + w->len[r];
    int32_t e = st_find(&m->st, s + l, size);
    if (e < 0) return;
    bigram g = {m->scores[e], 0, l, r, size};
    heap_push(w->heap, nh, g);
}

static int64_t spm_piece(const void *model, workspace *w, const uint8_t *s, int32_t n, int32_t *out) {
    const mg_spm *m = model;
    static const uint8_t utf8_len[16] = {1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 2, 2, 3, 4};
    int32_t last = -1;
    for (int32_t i = 0; i < n;) { /* one symbol per UTF-8 character */
        int32_t len = utf8_len[s[i] >> 4];
        if (len > n - i) len = n - i;
        w->len[i] = len;
        w->prev[i] = last;
        w->next[i] = -1;
        if (last >= 0) w->next[last] = i;
        last = i;
        i += len;
    }
    int64_t nh = 0;
    for (int32_t i = 0; w->next[i] >= 0; i = w->next[i]) spm_try_pair(m, w, &nh, s, i, w->next[i]);
    for (int32_t l; (l = merge_next(w, &nh)) >= 0;) {
        spm_try_pair(m, w, &nh, s, w->prev[l], l);
        spm_try_pair(m, w, &nh, s, l, w->next[l]);
    }
    int64_t o = 0;
    for (int32_t i = 0; i != -1; i = w->next[i]) {
        int32_t e = st_find(&m->st, s + i, w->len[i]);
        if (e >= 0) {
            out[o++] = m->st.ents[e].tok;
        } else {
            for (int32_t k = 0; k < w->len[i]; k++) {
                int32_t t = m->byte_tok[s[i + k]];
                if (t >= 0) out[o++] = t;
            }
        }
    }
    return o;
}

int64_t mg_spm_encode(const mg_spm *m, const uint8_t *text, const int64_t *piece_off, int64_t n_pieces,
                      int32_t *out_ids, int64_t *out_off) {
    return encode_all(m, spm_piece, text, piece_off, n_pieces, out_ids, out_off);
}
