/* moe_gguf.h - the one header of the moe-gguf C kernels.
 *
 * Every exported function is declared and documented here, once.  csrc/build_ffi.py feeds this file
 * (minus preprocessor lines) to cffi, so keep declarations in plain C that cffi can parse:
 * no macros in declarations, no inline bodies.  Internal helpers stay `static` inside their .c file.
 *
 * Conventions
 *  - `type` arguments are ggml type ids (F32 0, F16 1, Q4_0 2, ..., BF16 30); see moe_gguf/ggml_types.py.
 *  - Row lengths `n` are element counts and must be multiples of the type's block size; the Python layer
 *    (moe_gguf/ops/) checks shapes, dtypes, alignment and sizes before any pointer reaches C.
 *  - Functions return 0 on success and a negative MG_E* code on a bad argument they still detect.
 *  - SIMD (AVX2/FMA) paths are chosen at run time; each has a plain C reference (see mg_set_simd_level).
 */
#ifndef MOE_GGUF_H
#define MOE_GGUF_H

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

/* ---------------------------------------------------------------- errors ----- */
/* Return codes: 0 ok, -1 unsupported type, -2 bad size/shape, -3 out of memory, -4 other. */

/* ------------------------------------------------------------- cpu / simd ----- */
/* Returns the SIMD level the CPU supports: 0 scalar, 1 AVX2+FMA+F16C. */
int mg_cpu_simd_level(void);
/* Forces the SIMD level used by all kernels (clamped to what the CPU supports); returns the level now in use.
 * Tests set 0 to hold SIMD paths to the scalar reference. */
int mg_set_simd_level(int level);
/* The SIMD level now in use. */
int mg_get_simd_level(void);

/* ---------------------------------------------------------- quant formats ----- */
/* [section owned by csrc/quants.c, csrc/quants_k.c]  src/dst need no alignment (blocks are read with memcpy). */

/* Block size (elements per block) of a ggml type, or 0 if the type is not supported by these kernels. */
int mg_type_block_size(int type);
/* Bytes per block of a ggml type, or 0 if unsupported. */
size_t mg_type_block_bytes(int type);
/* Dequantizes `n` elements (a whole number of blocks) of type `type` from `src` into float32 `dst`, bit-exactly
 * as ggml's reference (and gguf-py's numpy) dequantizers; AVX2 paths give the same bits as the scalar ones.
 * Supported: F32, F16, BF16, Q4_0, Q4_1, Q5_0, Q5_1, Q8_0, Q8_K, Q2_K, Q3_K, Q4_K, Q5_K, Q6_K, IQ4_NL, IQ4_XS. */
int mg_dequantize_row(int type, const void *src, float *dst, int64_t n);
/* Quantizes `n` float32 elements (a whole number of blocks) from `src` into `dst` in type `type`.
 * Supported: F32, F16, BF16, Q8_0, Q4_0, Q4_1, Q5_0, Q5_1, Q8_K, Q2_K, Q3_K, Q4_K, Q5_K, Q6_K, IQ4_NL, IQ4_XS.
 * Q4_0..Q8_0 give the bytes of ggml's reference quantizers (= gguf-py's); Q8_K uses ggml's activation convention;
 * the K/IQ4 quantizers search block scales (ggml-style) and keep the best of that, a unit-weight search and
 * naive rounding per block.  `imatrix` (may be NULL) gives per-column importance weights of length n for the
 * K/IQ quantizers (ignored by the others).  Block formats return -4 if src or imatrix holds inf/NaN. */
int mg_quantize_row(int type, const float *src, void *dst, int64_t n, const float *imatrix);
/* Quantizes `nrows` contiguous rows of `n_per_row` float32 elements each into `dst` (rows of row-bytes each),
 * one mg_quantize_row per row with the same `imatrix` (length n_per_row, may be NULL).
 * Block formats (not F32/F16/BF16) return -4 if the input or imatrix holds inf/NaN. */
int mg_quantize_rows(int type, const float *src, void *dst, int64_t nrows, int64_t n_per_row, const float *imatrix);

/* ---------------------------------------------- threads, dot products, matmul ----- */
/* [section owned by csrc/threadpool.c, csrc/vecdot.c, csrc/matmul.c] */

/* A persistent pool of n_threads - 1 worker threads plus the calling thread (threadpool.c).  Workers spin
 * briefly, then sleep on a condition variable between jobs.  Concurrent callers are serialized. */
typedef struct mg_pool mg_pool;
/* A task run by mg_pool_run: called once per participating thread with ith in [0, nth). */
typedef void (*mg_task_fn)(void *arg, int ith, int nth);
/* Creates a pool of n_threads (1..255) threads in total; NULL on failure. */
mg_pool *mg_pool_create(int n_threads);
/* Stops and joins the workers and frees the pool (NULL is a no-op).  No call may be running on it. */
void mg_pool_destroy(mg_pool *pool);
/* Total threads of the pool (workers + caller); 0 for NULL. */
int mg_pool_n_threads(const mg_pool *pool);
/* Runs fn(arg, ith, nth) on nth threads (clamped to the pool size; the caller is ith 0) and returns when all
 * are done.  pool may be NULL (runs fn(arg, 0, 1) inline).  For use by other C kernels. */
void mg_pool_run(mg_pool *pool, mg_task_fn fn, void *arg, int nth);
/* As mg_pool_run, for tasks that hand out their work dynamically (e.g. an atomic counter) so that any subset
 * of the threads completes it: returns as soon as the caller's own share is done and the workers that had
 * already joined have finished; workers that wake up later skip the job (no stall on a busy machine). */
void mg_pool_run_dynamic(mg_pool *pool, mg_task_fn fn, void *arg, int nth);

/* Dot products (vecdot.c).  An activation row for weight type `type` is float32 for F32/F16/BF16, Q8_0 blocks
 * for Q4_0/Q5_0/Q8_0/IQ4_NL, Q8_0 values + f32 scale + block sum (40 B / 32) for Q4_1/Q5_1, Q8_K blocks for
 * Q2_K..Q6_K and IQ4_XS.  Supported weight types: F32 F16 BF16 Q4_0 Q4_1 Q5_0 Q5_1 Q8_0 Q2_K Q3_K Q4_K Q5_K
 * Q6_K IQ4_NL IQ4_XS. */
/* Bytes of the activation row of n elements for weight type `type`; 0 if unsupported or n not a block multiple. */
size_t mg_act_bytes(int type, int64_t n);
/* Converts n float32 values into the activation row for weight type `type` (dst: mg_act_bytes(type, n) bytes). */
int mg_quantize_act(int type, const float *x, void *dst, int64_t n);
/* *out = dot(weight row w of type `type`, activation row act), n elements (SIMD or reference per simd level). */
int mg_vec_dot(int type, int64_t n, const void *w, const void *act, float *out);

/* y[t, r] = sum_i W[r, i] x[t, i] (matmul.c): W [n_out, n_in] contiguous rows of type `type`, x float32
 * [n_tok, n_in], y float32 [n_tok, n_out].  pool may be NULL (single thread).  Bit-identical for any thread
 * count.  Returns MG_EUNSUPPORTED / MG_ESIZE / MG_ENOMEM on errors. */
int mg_matmul(mg_pool *pool, int type, const void *w, int64_t n_out, int64_t n_in, const float *x, int64_t n_tok,
              float *y);
/* Expert-indexed matmul: W [n_expert, n_out, n_in]; ids int32 [n_tok, k] (each in [0, n_expert));
 * x float32 [n_tok, n_in] (x_per_slot 0: shared by the k slots) or [n_tok, k, n_in] (x_per_slot 1);
 * y float32 [n_tok, k, n_out] with y[t, s] = W[ids[t, s]] x[t(, s)].  Each used expert's rows stream once. */
int mg_matmul_id(mg_pool *pool, int type, const void *w, int64_t n_expert, int64_t n_out, int64_t n_in,
                 const float *x, int x_per_slot, const int32_t *ids, int64_t n_tok, int64_t k, float *y);
/* Sum of the nbytes bytes of buf read by n_threads threads of the pool (pool may be NULL): a memory read
 * bandwidth probe for the benchmarks. */
double mg_read_sum(mg_pool *pool, int n_threads, const void *buf, size_t nbytes);

/* ------------------------------------------------------- neural-net ops ----- */
/* [section owned by csrc/nn.c] */

/* All tensors float32, row-major.  Return 0, or MG_ESIZE (-2) on a bad size, MG_ENOMEM (-3). */
/* y[r] = x[r] / sqrt(mean(x[r]^2) + eps) * w, for n_rows rows of d elements (out may equal x). */
int mg_rms_norm(float *out, const float *x, const float *w, int64_t n_rows, int64_t d, float eps);
/* In-place RoPE, GGML "NORM" style: pairs (v[2i], v[2i+1]) of each head's first n_rot values rotate by
 * theta = (float)pos[t] * inv_freq[i]; cos/sin are multiplied by `magnitude`.  Element (t, h, j) is at
 * x[t*tok_stride + h*head_stride + j] (strides in floats).  inv_freq has n_rot/2 entries (plain or YaRN). */
int mg_rope_norm(float *x, int64_t n_tok, int64_t n_head, int64_t n_rot, int64_t tok_stride, int64_t head_stride,
                 const int32_t *pos, const float *inv_freq, float magnitude);
/* In-place softmax of n_rows rows of n elements (a row of all -inf becomes all 0). */
int mg_softmax_rows(float *x, int64_t n_rows, int64_t n);
/* out[i] = silu(g[i]) * u[i] = g[i] / (1 + exp(-g[i])) * u[i]. */
int mg_silu_mul(float *out, const float *g, const float *u, int64_t n);
/* Causal attention of n_head query heads over ONE shared K/V head (MLA absorbed form).
 * q: n_tok x n_head x d_k float32.  kv: cache rows of type kv_type (F32 0 or F16 1), row j at element
 * j*kv_stride; key = row[0:d_k], value = row[0:d_v] (d_v <= d_k).  Query t sits at position n_kv0 + t and
 * attends to rows 0..n_kv0+t.  out: n_tok x n_head x d_v = sum_j softmax_j(scale * q.key_j) * value_j.
 * Work is split over the pool's threads by token (prefill) or by head group (decode); pool may be NULL.
 * Same result for any thread count. */
int mg_latent_attention(mg_pool *pool, float *out, const float *q, int64_t n_tok, int64_t n_head, int64_t d_k, int64_t d_v,
                        const void *kv, int kv_type, int64_t kv_stride, int64_t n_kv0, float scale);
/* llama.cpp's CPU arithmetic (ggml-cpu, x86 AVX2, flash attention off), bit for bit:
 * Grouped-query causal attention over an F16 cache.  kv: IEEE-half rows, row j (position j) at element
 * j*row_stride holds n_head_kv blocks [value (d_v) | key (d_k)].  q: n_tok x n_head x d_k float32, already
 * scaled; query t sits at position n_kv0 + t and sees keys max(0, p - window + 1)..p (window 0: all).  q and
 * the softmax weights are rounded to f16; products accumulate in f32 FMA lanes laid out as llama.cpp's kernels
 * do (one 8-lane accumulator when n_tok >= 2, llamafile's tinyBLAS; four for one token, ggml_vec_dot_f16);
 * softmax uses ggml's polynomial expf.  d_k, d_v multiples of 32.  out: n_tok x n_head x d_v. */
int mg_attention_f16_ggml(mg_pool *pool, float *out, const float *q, int64_t n_tok, int64_t n_head, int64_t n_head_kv,
                          int64_t d_k, int64_t d_v, const void *kv, int64_t row_stride, int64_t n_kv0, int64_t window);
/* In-place RoPE as ggml computes it: theta starts at pos[t] and is multiplied by freq_base^(-2/n_rot) per pair;
 * angle = freq_scale * theta / freq_factors[i] (freq_factors may be NULL), cos/sin (libm) times mscale.  neox:
 * pairs (i, i + n_rot/2), else (2i, 2i+1).  Layout as mg_rope_norm; n_rot <= 4096. */
int mg_rope_ggml(float *x, int64_t n_tok, int64_t n_head, int64_t n_rot, int64_t tok_stride, int64_t head_stride,
                 const int32_t *pos, float freq_base, float freq_scale, const float *freq_factors, float mscale, int neox);
/* table[h] = f16(gelu_tanh(f16 value with bits h)) as float, for all 65536 h (ggml's GELU table). */
int mg_gelu_table_f16(float *table);
/* out = gelu(g) * u through that table: g <= -10 -> 0, g >= 10 -> g * u, else table[f16 bits of g] * u. */
int mg_geglu_table(float *out, const float *g, const float *u, int64_t n, const float *table);
/* out (n_tok x n_rows) = x (n_tok x n_in) times the K-quant matrix w (n_rows x n_in, raw blocks) with the
 * arithmetic llama.cpp (x86 AVX2) uses for batches; activations are quantized to Q8_K.  mode 0 (Q4_K): the
 * repacked 8x8 GEMM (Q4_K with n_rows % 8 == 0, first n - n % 4 tokens): per 64 elements one FMA into a scale
 * sum and one into a min sum, result scale - min.  mode 1 (Q4_K, Q5_K, Q6_K, IQ4_XS): the tiled K-quant GEMM
 * (batches of >= 8 tokens, weights not repacked): per super-block acc = fma(d*isum - dmin*imin, d_y, acc) (the
 * difference fused: fma(-dmin, imin, d*isum); Q6_K and IQ4_XS: acc = fma(d*isum, d_y, acc)).
 * MG_EUNSUPPORTED for other types/modes. */
int mg_kquant_gemm_ggml(mg_pool *pool, float *out, int type, int mode, const void *w, int64_t n_rows, int64_t n_in,
                        const float *x, int64_t n_tok);
/* Top-k MoE routing of n_tok rows of n_exp router logits.  gating 1 softmax, 2 sigmoid -> probs;
 * selection = probs + bias (bias may be NULL).  n_group > 1: only the n_group_used best groups of
 * n_exp/n_group experts compete (group score: max for softmax, sum of top-2 for sigmoid).  ids[t] get the
 * k best selections (descending, ties -> lower id); w[t] = probs[ids], divided by their sum if `norm`,
 * times `scale` (0 -> 1).  ids: n_tok x k int32, w: n_tok x k. */
int mg_moe_route(int32_t *ids, float *w, const float *logits, int64_t n_tok, int64_t n_exp, int64_t k, int gating,
                 const float *bias, int64_t n_group, int64_t n_group_used, int norm, float scale);

/* --------------------------------------------------------------- fused MoE ----- */
/* [section owned by csrc/moe.c] */

/* The weights of one MoE FFN layer for mg_moe_ffn: fill once per layer, reuse for every call.
 * Routed experts: gate/up [n_expert, n_ff, n_embd] (or, with gate_up_merged = 1, `gate` is the merged
 * [n_expert, 2*n_ff, n_embd] tensor, gate rows then up rows per expert, of type gate_type; `up` unused) and
 * down [n_expert, n_embd, n_ff].  Shared expert (optional, sh_gate NULL for none): 2-D gate/up [n_ff_sh, n_embd],
 * down [n_embd, n_ff_sh].  Router (optional, router NULL for none): [n_expert, n_embd] and mg_moe_route's
 * parameters (gating 1 softmax / 2 sigmoid, bias NULL or n_expert floats, groups, norm, scale).  Every tensor
 * is contiguous rows of its ggml type (any type mg_vec_dot supports; types may differ between tensors). */
typedef struct {
    int64_t n_embd, n_ff, n_expert, n_expert_used, n_ff_sh;
    int gate_up_merged;
    int gate_type, up_type, down_type;
    const void *gate, *up, *down;
    int sh_gate_type, sh_up_type, sh_down_type;
    const void *sh_gate, *sh_up, *sh_down;
    int router_type;
    const void *router;
    int gating;
    const float *bias;
    int64_t n_group, n_group_used;
    int norm;
    float scale;
} mg_moe_weights;
/* Bytes of scratch mg_moe_ffn needs for n_tok rows (into *bytes); MG_E* if the weights are inconsistent. */
int mg_moe_ffn_work_bytes(const mg_moe_weights *m, int64_t n_tok, size_t *bytes);
/* The MoE FFN of n_tok rows of h (float32 [n_tok, n_embd], the normed hidden state) into out [n_tok, n_embd]:
 * out[t] = sum_s weights[t, s] * down_{ids[t, s]}(silu(gate_e h) * up_e h) + shared_down(silu(sh_gate h) * sh_up h),
 * the slots summed in order, then the shared expert added.  With a router, ids int32 [n_tok, n_expert_used] and
 * weights float32 [n_tok, n_expert_used] are outputs (mg_moe_route on router x h); without one they are inputs
 * (ids checked to be in [0, n_expert)).  Activations are quantized once per format, as mg_matmul does, so each
 * expert's output equals mg_matmul_id's bit for bit.  One pool dispatch (pool may be NULL); results are
 * bit-identical for any thread count.  work: at least mg_moe_ffn_work_bytes bytes, any alignment. */
int mg_moe_ffn(mg_pool *pool, const mg_moe_weights *m, const float *h, int64_t n_tok, int32_t *ids, float *weights,
               float *out, void *work, size_t work_bytes);

/* One matrix-vector product of a mg_gemv_batch: y[t] = W x[t] for t < n_tok, W [n_out, n_in] contiguous rows of
 * ggml type `type`; x row t at x + t * x_stride, y row t at y + t * y_stride (floats; strides >= n_in / n_out
 * when n_tok > 1).  Descriptors of stage s (0..3) start after every output of stage s-1 is written, so they may
 * read those outputs (inputs are converted before their stage writes anything).  Outputs must not overlap. */
typedef struct {
    int type;
    const void *w;
    int64_t n_out, n_in;
    const float *x;
    int64_t x_stride;
    float *y;
    int64_t y_stride;
    int stage;
} mg_gemv_desc;
/* Scratch bytes mg_gemv_batch needs (into *bytes); MG_E* on a bad descriptor. */
int mg_gemv_batch_work_bytes(const mg_gemv_desc *d, int64_t n_desc, int64_t n_tok, size_t *bytes);
/* n_desc matrix products over n_tok rows (meant for decode: weights stream once per token) in ONE pool dispatch:
 * each distinct input row is quantized once per activation format, then all rows of all matrices of the stage
 * are split into work items.  Every y element equals mg_matmul's bit for bit, for any thread count.
 * work: at least mg_gemv_batch_work_bytes bytes, any alignment. */
int mg_gemv_batch(mg_pool *pool, const mg_gemv_desc *d, int64_t n_desc, int64_t n_tok, void *work, size_t work_bytes);

/* One decoded token's MLA bookkeeping after the q and kv_a projections: ropes q_pe (the last n_rot of each of the
 * n_head rows of q_head values in q, in place) and copies it behind each head's absorbed query row in
 * qa (n_head rows of kv_lora + n_rot: [W_UK^T q_nope | q_pe]); ropes k_pe = ckv[kv_lora:] and RMS-normalizes
 * c_kv = ckv[:kv_lora] by norm_w (both in place in ckv, kv_lora + n_rot floats), then stores [c_kv | k_pe] into
 * the cache row kv_row (kv_type 0: float32, 1: float16 rounded to nearest even).  Same bits as mg_rope_norm and
 * mg_rms_norm (which it calls) and numpy's float16 cast. */
int mg_mla_decode_prep(float *q, int64_t n_head, int64_t q_head, int64_t n_rot, float *qa, int64_t kv_lora, float *ckv,
                       const float *norm_w, float eps, int32_t pos, const float *inv_freq, float magnitude, void *kv_row,
                       int kv_type);

/* --------------------------------------------------- GGUF string arrays ----- */
/* [section owned by csrc/gguf_strings.c] */

/* Scans `count` GGUF strings (u64 little-endian length + bytes) starting at byte `pos` of buf[0:size]:
 * prefix_pos[i] = offset of string i's length prefix, lens[i] = its length (either array may be NULL),
 * *end = offset after the last string read (may be NULL).  Returns the number of strings read: `count`, or
 * the index of the first string whose prefix or bytes run past `size` (then *end is where it starts). */
int64_t mg_gguf_scan_strings(const uint8_t *buf, uint64_t size, uint64_t pos, int64_t count, int64_t *prefix_pos,
                             int64_t *lens, uint64_t *end);
/* Copies the bytes of `count` GGUF strings at `pos` into out (room for out_cap bytes), one `sep` byte between
 * consecutive strings; *sep_found (may be NULL) = whether a string itself holds a `sep` byte.  Returns the bytes
 * written, or -1 when a string runs past `size` or out_cap is too small. */
int64_t mg_gguf_join_strings(const uint8_t *buf, uint64_t size, uint64_t pos, int64_t count, uint8_t sep,
                             uint8_t *out, uint64_t out_cap, int *sep_found);

/* Byte-level BPE merger (llama.cpp's algorithm) over a vocabulary's tokens and merges: string i of a table is
 * buf[start[i] : start[i] + len[i]] (byte-level UTF-8 text, as stored in tokenizer.ggml.tokens / .merges).
 * Token and merge strings with characters outside GPT-2's byte alphabet never match and are left out; a merge
 * "a b" is split at the first space after its first byte; the first of duplicate tokens/merges wins.
 * ignore_merges: a piece that is itself a token is emitted whole (Llama 3 style).  NULL on a bad argument or
 * out of memory.  The object is read-only after creation: mg_bpe_encode may run on it from several threads. */
typedef struct mg_bpe mg_bpe;
mg_bpe *mg_bpe_create(const uint8_t *tok_buf, const int64_t *tok_start, const int64_t *tok_len, int64_t n_tok,
                      const uint8_t *merge_buf, const int64_t *merge_start, const int64_t *merge_len, int64_t n_merge,
                      int ignore_merges);
void mg_bpe_free(mg_bpe *bpe);
/* Merges each piece text[piece_off[p] : piece_off[p+1]] (raw UTF-8 bytes of pre-tokenized text; offsets
 * non-decreasing) into token ids: piece p's ids are out_ids[out_off[p] : out_off[p+1]].  out_ids needs room for
 * piece_off[n_pieces] - piece_off[0] ids (at most one per byte), out_off for n_pieces + 1 entries.  Returns the
 * number of ids written, MG_ESIZE (-2) on bad offsets, MG_ENOMEM (-3). */
int64_t mg_bpe_encode(const mg_bpe *bpe, const uint8_t *text, const int64_t *piece_off, int64_t n_pieces,
                      int32_t *out_ids, int64_t *out_off);

/* SentencePiece-style merger (llama.cpp's SPM algorithm) over a `llama` vocabulary: token i is
 * tok_buf[tok_start[i] : tok_start[i] + tok_len[i]] (UTF-8) with score scores[i] (scores may be NULL: all 0).
 * Symbols start as the UTF-8 characters of a piece; the adjacent pair whose concatenation is a token of highest
 * score (leftmost on ties) is merged until none is left; a final symbol that is no token becomes
 * byte_tok[b] for each of its bytes b (256 entries; -1: dropped).  The first of duplicate tokens wins.
 * NULL on a bad argument or out of memory.  Read-only after creation (mg_spm_encode may run concurrently). */
typedef struct mg_spm mg_spm;
mg_spm *mg_spm_create(const uint8_t *tok_buf, const int64_t *tok_start, const int64_t *tok_len, int64_t n_tok,
                      const float *scores, const int32_t *byte_tok);
void mg_spm_free(mg_spm *spm);
/* As mg_bpe_encode, for already escaped text (spaces as U+2581, prefix space added by the caller). */
int64_t mg_spm_encode(const mg_spm *spm, const uint8_t *text, const int64_t *piece_off, int64_t n_pieces,
                      int32_t *out_ids, int64_t *out_off);

#ifdef __cplusplus
}
#endif
#endif /* MOE_GGUF_H */
