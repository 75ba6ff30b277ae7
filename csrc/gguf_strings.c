/* gguf_strings.c - GGUF string arrays: a checked scan of length-prefixed string arrays, and a byte-level BPE
 * merger built from a vocabulary's `tokenizer.ggml.tokens` / `tokenizer.ggml.merges` string arrays.
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

typedef struct {
    int64_t off;  /* into bpe->blob */
    int32_t len;
    int32_t tok;  /* token id, or -1 (a merge half that is no token) */
} entry;

struct mg_bpe {
    uint8_t *blob;  /* raw bytes of every entry */
    int64_t blob_used, blob_cap;
    entry *ents;
    int64_t n_ents, ents_cap;
    int32_t *slots;  /* string hash table: entry index or -1 */
    uint64_t slot_mask;
    uint64_t *pair_keys;  /* pair hash table: (left entry << 32 | right entry), or UINT64_MAX when empty */
    int32_t *pair_rank;
    uint64_t pair_mask;
    int32_t byte_ent[256];  /* entry of each single raw byte, or -1 */
    int32_t byte_tok[256];  /* token of each single raw byte, or -1 */
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

static int32_t find_str(const mg_bpe *b, const uint8_t *s, int64_t n, uint64_t h) {
    uint64_t i = h & b->slot_mask;
    for (;;) {
        int32_t e = b->slots[i];
        if (e < 0) return -1;
        const entry *en = &b->ents[e];
        if (en->len == n && memcmp(b->blob + en->off, s, (size_t)n) == 0) return e;
        i = (i + 1) & b->slot_mask;
    }
}

/* the entry of raw string s, which the caller wrote at blob + blob_used (added, and kept there, if new) */
static int32_t intern(mg_bpe *b, const uint8_t *s, int64_t n) {
    uint64_t h = hash_bytes(s, n);
    uint64_t i = h & b->slot_mask;
    for (;;) {
        int32_t e = b->slots[i];
        if (e < 0) break;
        const entry *en = &b->ents[e];
        if (en->len == n && memcmp(b->blob + en->off, s, (size_t)n) == 0) return e;
        i = (i + 1) & b->slot_mask;
    }
    int32_t e = (int32_t)b->n_ents++;
    b->ents[e].off = s - b->blob;
    b->ents[e].len = (int32_t)n;
    b->ents[e].tok = -1;
    b->blob_used += n;
    b->slots[i] = e;
    return e;
}

static int32_t pair_lookup(const mg_bpe *b, int32_t l, int32_t r) {
    if (l < 0 || r < 0) return -1;
    uint64_t key = ((uint64_t)(uint32_t)l << 32) | (uint32_t)r;
    uint64_t i = hash_pair(key) & b->pair_mask;
    for (;;) {
        uint64_t k = b->pair_keys[i];
        if (k == UINT64_MAX) return -1;
        if (k == key) return b->pair_rank[i];
        i = (i + 1) & b->pair_mask;
    }
}

static void pair_insert(mg_bpe *b, int32_t l, int32_t r, int32_t rank) {
    uint64_t key = ((uint64_t)(uint32_t)l << 32) | (uint32_t)r;
    uint64_t i = hash_pair(key) & b->pair_mask;
    for (;;) {
        uint64_t k = b->pair_keys[i];
        if (k == key) return; /* first entry wins */
        if (k == UINT64_MAX) {
            b->pair_keys[i] = key;
            b->pair_rank[i] = rank;
            return;
        }
        i = (i + 1) & b->pair_mask;
    }
}

static uint64_t pow2_at_least(uint64_t n) {
    uint64_t c = 16;
    while (c < n) c <<= 1;
    return c;
}

void mg_bpe_free(mg_bpe *b) {
    if (!b) return;
    free(b->blob);
    free(b->ents);
    free(b->slots);
    free(b->pair_keys);
    free(b->pair_rank);
    free(b);
}

mg_bpe *mg_bpe_create(const uint8_t *tok_buf, const int64_t *tok_start, const int64_t *tok_len, int64_t n_tok,
                      const uint8_t *merge_buf, const int64_t *merge_start, const int64_t *merge_len, int64_t n_merge,
                      int ignore_merges) {
    if (n_tok < 0 || n_merge < 0 || n_tok > INT32_MAX / 4 || n_merge > INT32_MAX / 4) return NULL;
    int16_t tab[0x144]; /* byte-level code point -> raw byte, or -1 */
    init_byte_table(tab);
    int64_t total = 0;
    for (int64_t i = 0; i < n_tok; i++) {
        if (tok_start[i] < 0 || tok_len[i] < 0 || tok_len[i] > INT32_MAX) return NULL;
        total += tok_len[i];
    }
    for (int64_t i = 0; i < n_merge; i++) {
        if (merge_start[i] < 0 || merge_len[i] < 0 || merge_len[i] > INT32_MAX) return NULL;
        total += merge_len[i];
    }
    mg_bpe *b = calloc(1, sizeof *b);
    if (!b) return NULL;
    b->ignore_merges = ignore_merges != 0;
    b->blob_cap = total + 256 + 1;
    b->ents_cap = n_tok + 2 * n_merge + 256;
    uint64_t slots = pow2_at_least((uint64_t)b->ents_cap * 2);
    uint64_t pairs = pow2_at_least((uint64_t)n_merge * 2 + 16);
    b->blob = malloc((size_t)b->blob_cap);
    b->ents = malloc((size_t)b->ents_cap * sizeof(entry));
    b->slots = malloc((size_t)slots * sizeof(int32_t));
    b->pair_keys = malloc((size_t)pairs * sizeof(uint64_t));
    b->pair_rank = malloc((size_t)pairs * sizeof(int32_t));
    if (!b->blob || !b->ents || !b->slots || !b->pair_keys || !b->pair_rank) {
        mg_bpe_free(b);
        return NULL;
    }
    memset(b->slots, 0xff, (size_t)slots * sizeof(int32_t));
    memset(b->pair_keys, 0xff, (size_t)pairs * sizeof(uint64_t));
    b->slot_mask = slots - 1;
    b->pair_mask = pairs - 1;

    for (int64_t i = 0; i < n_tok; i++) {
        uint8_t *dst = b->blob + b->blob_used;
        int64_t n = to_raw(tab, tok_buf + tok_start[i], tok_len[i], dst);
        if (n <= 0) continue; /* never matches byte-level text */
        int32_t e = intern(b, dst, n);
        if (b->ents[e].tok < 0) b->ents[e].tok = (int32_t)i; /* first id wins on duplicates */
    }
    for (int b0 = 0; b0 < 256; b0++) {
        uint8_t c = (uint8_t)b0;
        uint64_t h = hash_bytes(&c, 1);
        int32_t e = find_str(b, &c, 1, h);
        b->byte_ent[b0] = e;
        b->byte_tok[b0] = e >= 0 ? b->ents[e].tok : -1;
    }
    for (int64_t i = 0; i < n_merge; i++) {
        const uint8_t *m = merge_buf + merge_start[i];
        int64_t n = merge_len[i];
        const uint8_t *sp = n > 1 ? memchr(m + 1, ' ', (size_t)(n - 1)) : NULL;
        if (!sp) continue;
        int64_t nl = sp - m, nr = n - nl - 1;
        uint8_t *dl = b->blob + b->blob_used;
        int64_t rl = to_raw(tab, m, nl, dl);
        if (rl <= 0) continue;
        int32_t el = intern(b, dl, rl);
        uint8_t *dr = b->blob + b->blob_used;
        int64_t rr = to_raw(tab, sp + 1, nr, dr);
        if (rr <= 0) continue;
        int32_t er = intern(b, dr, rr);
        pair_insert(b, el, er, (int32_t)i);
    }
    /* the single bytes may have been interned as merge halves only */
    for (int b0 = 0; b0 < 256; b0++) {
        if (b->byte_ent[b0] < 0) {
            uint8_t c = (uint8_t)b0;
            b->byte_ent[b0] = find_str(b, &c, 1, hash_bytes(&c, 1));
        }
    }
    return b;
}

typedef struct {
    int32_t rank, left, right, size;
} bigram;

static int bigram_less(const bigram *a, const bigram *b) {
    return a->rank < b->rank || (a->rank == b->rank && a->left < b->left);
}

static void heap_push(bigram *h, int64_t *n, bigram v) {
    int64_t i = (*n)++;
    while (i > 0) {
        int64_t p = (i - 1) / 2;
        if (!bigram_less(&v, &h[p])) break;
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
        if (c + 1 < m && bigram_less(&h[c + 1], &h[c])) c++;
        if (!bigram_less(&h[c], &v)) break;
        h[i] = h[c];
        i = c;
    }
    if (m > 0) h[i] = v;
    return top;
}

typedef struct {
    int32_t *len, *prev, *next, *ent;
    bigram *heap;
} workspace;

static void try_pair(const mg_bpe *b, workspace *w, int64_t *nh, int32_t l, int32_t r) {
    if (l < 0 || r < 0) return;
    int32_t rank = pair_lookup(b, w->ent[l], w->ent[r]);
    if (rank < 0) return;
    bigram g = {rank, l, r, w->len[l] + w->len[r]};
    heap_push(w->heap, nh, g);
}

static int64_t bpe_piece(const mg_bpe *b, workspace *w, const uint8_t *s, int32_t n, int32_t *out) {
    int64_t o = 0;
    if (b->ignore_merges) {
        int32_t e = find_str(b, s, n, hash_bytes(s, n));
        if (e >= 0 && b->ents[e].tok >= 0) {
            out[0] = b->ents[e].tok;
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
    for (int32_t i = 0; i + 1 < n; i++) try_pair(b, w, &nh, i, i + 1);
    while (nh > 0) {
        bigram g = heap_pop(w->heap, &nh);
        int32_t l = g.left, r = g.right;
        if (w->len[l] == 0 || w->len[r] == 0 || w->next[l] != r || w->len[l] + w->len[r] != g.size) continue;
        w->len[l] += w->len[r];
        w->len[r] = 0;
        w->next[l] = w->next[r];
        if (w->next[r] >= 0) w->prev[w->next[r]] = l;
        w->ent[l] = find_str(b, s + l, w->len[l], hash_bytes(s + l, w->len[l]));
        try_pair(b, w, &nh, w->prev[l], l);
        try_pair(b, w, &nh, l, w->next[l]);
    }
    for (int32_t i = 0; i != -1; i = w->next[i]) {
        int32_t e = w->ent[i];
        if (e >= 0 && b->ents[e].tok >= 0) {
            out[o++] = b->ents[e].tok;
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
    if (!b || n_pieces < 0) return MG_ESIZE;
    int64_t maxlen = 0;
    for (int64_t p = 0; p < n_pieces; p++) {
        int64_t len = piece_off[p + 1] - piece_off[p];
        if (len < 0 || len > INT32_MAX / 4) return MG_ESIZE;
        if (len > maxlen) maxlen = len;
    }
    workspace w;
    size_t m = (size_t)(maxlen > 0 ? maxlen : 1);
    void *mem = malloc(m * 4 * sizeof(int32_t) + 3 * m * sizeof(bigram));
    if (!mem) return MG_ENOMEM;
    w.len = mem;
    w.prev = w.len + m;
    w.next = w.prev + m;
    w.ent = w.next + m;
    w.heap = (bigram *)(w.ent + m);
    int64_t o = 0;
    out_off[0] = 0;
    for (int64_t p = 0; p < n_pieces; p++) {
        int32_t len = (int32_t)(piece_off[p + 1] - piece_off[p]);
        if (len > 0) o += bpe_piece(b, &w, text + piece_off[p], len, out_ids + o);
        out_off[p + 1] = o;
    }
    free(mem);
    return o;
}
