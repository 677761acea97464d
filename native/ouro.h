/*
 * ouro.h - batched token-tree verification on a llama.cpp context.
 *
 * The caller (ouroboros_lite/native.py) owns the llama context; this library never creates or
 * frees one. It is plain C99 with no globals: every state lives in an ouro_tree the caller
 * allocates with ouro_tree_init and releases with ouro_tree_free.
 *
 * Tree batch layout (one llama_decode for the whole tree). Nodes are given parent-before-child;
 * node i has batch index i + 1, the root has batch index 0. One sequence id per root-to-leaf
 * path; leaves get ids 0, 1, 2, ... in node order, so path 0 lives on the trunk sequence 0 and
 * the others are fresh copies of it (llama_memory_seq_cp 0 -> s). Every node is in the batch
 * once and carries the ids of all paths through it. Example, root r at position P:
 *
 *        r ─ a ─ b          index  token  pos   seq ids   logits
 *          │   └ c            0     r     P     {0,1,2}   yes
 *          └ d                1     a     P+1   {0,1}     yes
 *                             2     b     P+2   {0}       yes
 *                             3     c     P+2   {1}       yes
 *                             4     d     P+1   {2}       yes
 *
 * llama.cpp masks attention by sequence membership of KV cells, so each node sees the prompt,
 * its ancestors and itself, and nothing else. Coupled sequences need kv_unified = true.
 */
#ifndef OURO_H
#define OURO_H

#include "llama_abi.h"

#ifdef __cplusplus
extern "C" {
#endif

#define OURO_ABI_VERSION 3

/* Return codes. Every error is reported before llama_decode runs, except OURO_ERR_DECODE and
 * OURO_ERR_NO_LOGITS, and every error leaves the context as it was before the call (sequence 0
 * unchanged, branch sequences cleared). Every size and index is range-checked here. */
#define OURO_OK                  0
#define OURO_ERR_ARGUMENT       -1  /* NULL pointer, count out of range, arrays of unequal length */
#define OURO_ERR_TOO_MANY_NODES -2  /* root + nodes > n_batch of the context or tree capacity */
#define OURO_ERR_TOO_MANY_PATHS -3  /* leaves > n_seq_max of the context or tree capacity     */
#define OURO_ERR_BAD_PARENT     -4  /* parent not in [-1, i): out of range, forward or cycle  */
#define OURO_ERR_BAD_TOKEN      -5  /* token id not in [0, n_vocab)                           */
#define OURO_ERR_BAD_POSITION   -6  /* position is not the end of the sequence + 1 (rollback: past it) */
#define OURO_ERR_CONTEXT_FULL   -7  /* the deepest node, or the KV cells the batch needs, exceed n_ctx */
#define OURO_ERR_DECODE         -8  /* llama_decode failed; see ouro_tree_last_decode_rc      */
#define OURO_ERR_NO_MEMORY      -9
#define OURO_ERR_STATE         -10  /* accept/commit without a decoded tree, or bad node index */
#define OURO_ERR_ROLLBACK      -11  /* llama.cpp could not remove part of a sequence (recurrent) */
#define OURO_ERR_NO_LOGITS     -12  /* llama.cpp returned no logits for a batch entry         */

typedef struct ouro_tree ouro_tree;

/* ABI self-description for tests: [sizeof(llama_batch), offsetof each of its 7 fields]. */
void    ouro_abi_batch_layout(int64_t out[8]);
int32_t ouro_abi_version(void);

/* llama_decode on ctx returns 2 (aborted) as soon as *flag is non-zero (checked between graph
 * nodes, without Python's lock); flag NULL removes the check. The flag must outlive its use. */
void ouro_set_abort_flag(struct llama_context * ctx, volatile int32_t * flag);

/* n_vocab of the context's model, read through llama.h (OURO_ERR_ARGUMENT for NULL). */
int32_t ouro_n_vocab(const struct llama_context * ctx);

/* Index of the largest value (the first one on ties), as llama.cpp's greedy sampler picks;
 * OURO_ERR_ARGUMENT for NULL or n <= 0. */
int32_t ouro_argmax(const float * values, int32_t n);

/* Decode tokens[0..n) as a chain on sequence `seq` (< n_seq_max) at positions pos0.., in chunks
 * of n_batch; pos0 must be the end of the sequence + 1 and the chain must fit in the KV cells
 * left. Only the last token gets logits; its argmax is written to *argmax_last (may be NULL).
 * Returns OURO_OK or an error code; on OURO_ERR_DECODE *llama_rc (may be NULL) is set. On any
 * error no token of the chain stays in the KV cache (earlier chunks are removed again). */
int32_t ouro_decode_chain(struct llama_context * ctx, const llama_token * tokens, int32_t n,
                          llama_pos pos0, llama_seq_id seq, llama_token * argmax_last,
                          int32_t * llama_rc);

/* Logits of the last entry of the last decode (n_vocab floats owned by llama.cpp), or NULL. */
float * ouro_logits_last(struct llama_context * ctx);

/* Keep positions < pos of sequence 0, clear every other sequence (roll back rejected tokens).
 * pos must be in [0, end of sequence 0 + 1]: OURO_ERR_ARGUMENT below, OURO_ERR_BAD_POSITION
 * above; OURO_ERR_ROLLBACK when llama.cpp cannot remove the tail (llama_memory_seq_rm false). */
int32_t ouro_rollback(struct llama_context * ctx, llama_pos pos);

/* A reusable tree verifier for one context; capacities bound every later call. NULL when out
 * of memory or out of range: max_nodes in [0, n_batch), max_paths in [1, n_seq_max]. */
ouro_tree * ouro_tree_init(struct llama_context * ctx, int32_t max_nodes, int32_t max_paths);
void        ouro_tree_free(ouro_tree * tree);

/* Validate the tree, prepare branch sequences, decode it in one batch and compute every node's
 * greedy argmax. root: the last accepted token, not yet in the KV cache, at position pos_root.
 * tokens/parents: n_tokens nodes (0: a plain one-token step) and n_parents parents, which
 * must be equal; parents[i] is -1 for a child of the root, else an index < i. The tree must fit
 * by depth (pos_root + depth < n_ctx) and by KV cells (cells in use + 1 + n_tokens <= n_ctx).
 * A tree still uncommitted from the last decode is discarded first. */
int32_t ouro_tree_decode(ouro_tree * tree, llama_token root, llama_pos pos_root,
                         const llama_token * tokens, int32_t n_tokens,
                         const int32_t * parents, int32_t n_parents);

/* Drop the uncommitted tree of the last decode (root included) from the KV cache and clear the
 * branch sequences; the context is as before that decode. OURO_OK if there is none. */
int32_t ouro_tree_discard(ouro_tree * tree);

/* After a successful decode: per batch entry argmax (entry 0 = root, entry i+1 = node i), and
 * the logits row of one entry (n_vocab floats, owned by llama.cpp, valid until the next decode). */
const llama_token * ouro_tree_argmax(const ouro_tree * tree);
float *             ouro_tree_logits(ouro_tree * tree, int32_t entry);
int32_t             ouro_tree_n_paths(const ouro_tree * tree);
int32_t             ouro_tree_last_decode_rc(const ouro_tree * tree);

/* Greedy acceptance: from the root, repeatedly step to the child whose token equals the current
 * node's argmax. Writes the accepted node indices to path (capacity n_nodes), their count to
 * *n_path, and the target's token after the last accepted node to *next_token. */
int32_t ouro_tree_accept_greedy(const ouro_tree * tree, int32_t * path, int32_t * n_path,
                                llama_token * next_token);

/* Keep the root and the path ending at `last_node` (-1: the root alone) in sequence 0, drop
 * everything else the decode added, and clear every branch sequence. A path on a branch
 * (not sequence 0) is decoded again on sequence 0 rather than kept in place: with flash
 * attention, kept branch cells change later logits (see ouro.c); this may return
 * OURO_ERR_DECODE, after which the KV holds the prefix only, as before the decode. A node
 * index out of range is OURO_ERR_STATE and leaves the tree decoded (commit it again). The
 * logits of the tree are not valid after a commit. */
int32_t ouro_tree_commit(ouro_tree * tree, int32_t last_node);

#ifdef __cplusplus
}
#endif

#endif
