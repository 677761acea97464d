/* ouro.c - see ouro.h for the contract and the batch layout. */
#include "ouro.h"

#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

struct ouro_tree {
    struct llama_context * ctx;
    int32_t max_entries;      /* root + nodes */
    int32_t max_paths;
    int32_t n_vocab;

    /* llama_batch arrays, max_entries each; seq ids in a flat [max_entries][max_paths] block */
    llama_token *   token;
    llama_pos *     pos;
    int32_t *       n_seq_id;
    llama_seq_id ** seq_id;
    llama_seq_id *  seq_store;
    int8_t *        logits;

    int32_t *       parent;   /* batch index of the parent, -1 for the root */
    llama_token *   argmax;

    int32_t   n_entries;
    int32_t   n_paths;
    llama_pos pos_root;
    int32_t   decoded;
    int32_t   last_decode_rc;
};

void ouro_abi_batch_layout(int64_t out[8]) {
    out[0] = (int64_t) sizeof(llama_batch);
    out[1] = (int64_t) offsetof(llama_batch, n_tokens);
    out[2] = (int64_t) offsetof(llama_batch, token);
    out[3] = (int64_t) offsetof(llama_batch, embd);
    out[4] = (int64_t) offsetof(llama_batch, pos);
    out[5] = (int64_t) offsetof(llama_batch, n_seq_id);
    out[6] = (int64_t) offsetof(llama_batch, seq_id);
    out[7] = (int64_t) offsetof(llama_batch, logits);
}

int32_t ouro_abi_version(void) { return OURO_ABI_VERSION; }

static bool abort_if_flag_set(void * data) { return *(volatile int32_t *) data != 0; }

void ouro_set_abort_flag(struct llama_context * ctx, volatile int32_t * flag) {
    if (ctx != NULL) {
        llama_set_abort_callback(ctx, flag != NULL ? abort_if_flag_set : NULL, (void *) flag);
    }
}

int32_t ouro_n_vocab(const struct llama_context * ctx) {
    if (ctx == NULL) {
        return OURO_ERR_ARGUMENT;
    }
    return llama_vocab_n_tokens(llama_model_get_vocab(llama_get_model(ctx)));
}

int32_t ouro_argmax(const float * values, int32_t n) {
    if (values == NULL || n <= 0) {
        return OURO_ERR_ARGUMENT;
    }
    int32_t best = 0;
    for (int32_t i = 1; i < n; i++) {
        if (values[i] > values[best]) {
            best = i;
        }
    }
    return best;
}

/* KV cells the context's sequences hold, a cell shared by several sequences counted once per
 * sequence: exact while only sequence 0 holds cells, an upper bound otherwise. A sequence holds
 * every position between its min and max (llama.h), one cell each in the batches we build. */
static int64_t cells_in_use(const struct llama_context * ctx) {
    llama_memory_t mem   = llama_get_memory(ctx);
    const int64_t  n_seq = (int64_t) llama_n_seq_max(ctx);
    int64_t        used  = 0;
    for (llama_seq_id s = 0; s < n_seq; s++) {
        const llama_pos last = llama_memory_seq_pos_max(mem, s);
        if (last >= 0) {
            used += (int64_t) last - llama_memory_seq_pos_min(mem, s) + 1;
        }
    }
    return used;
}

/* Whether n_new more cells fit in the (unified) KV cache of n_ctx cells. */
static int fits_in_cache(const struct llama_context * ctx, int64_t n_new) {
    return cells_in_use(ctx) + n_new <= (int64_t) llama_n_ctx(ctx);
}

/* Keep positions < pos of sequence 0 and nothing else. llama.cpp answers false when it cannot
 * remove part of a sequence (recurrent memory): OURO_ERR_ROLLBACK. */
static int32_t keep_trunk_before(llama_memory_t mem, llama_pos pos) {
    const int removed = llama_memory_seq_rm(mem, -1, pos, -1);
    llama_memory_seq_keep(mem, 0);
    return removed ? OURO_OK : OURO_ERR_ROLLBACK;
}

int32_t ouro_decode_chain(struct llama_context * ctx, const llama_token * tokens, int32_t n,
                          llama_pos pos0, llama_seq_id seq, llama_token * argmax_last,
                          int32_t * llama_rc) {
    if (ctx == NULL || tokens == NULL || n <= 0 || seq < 0 || (uint32_t) seq >= llama_n_seq_max(ctx) ||
        pos0 < 0) {
        return OURO_ERR_ARGUMENT;
    }
    llama_memory_t mem = llama_get_memory(ctx);
    if (pos0 != llama_memory_seq_pos_max(mem, seq) + 1) {
        return OURO_ERR_BAD_POSITION;
    }
    if ((int64_t) pos0 + n > (int64_t) llama_n_ctx(ctx) || !fits_in_cache(ctx, n)) {
        return OURO_ERR_CONTEXT_FULL;
    }
    const int32_t n_vocab = ouro_n_vocab(ctx);
    for (int32_t i = 0; i < n; i++) {
        if (tokens[i] < 0 || tokens[i] >= n_vocab) {
            return OURO_ERR_BAD_TOKEN;
        }
    }
    const int32_t chunk = (int32_t) llama_n_batch(ctx);
    const int32_t cap = n < chunk ? n : chunk;

    llama_token *   token    = malloc(sizeof(llama_token) * cap);
    llama_pos *     pos      = malloc(sizeof(llama_pos) * cap);
    int32_t *       n_seq_id = malloc(sizeof(int32_t) * cap);
    llama_seq_id ** seq_ptr  = malloc(sizeof(llama_seq_id *) * cap);
    int8_t *        logits   = malloc(sizeof(int8_t) * cap);
    llama_seq_id    seq_one  = seq;
    int32_t         status   = OURO_OK;
    if (!token || !pos || !n_seq_id || !seq_ptr || !logits) {
        status = OURO_ERR_NO_MEMORY;
        goto done;
    }
    for (int32_t start = 0; start < n; start += chunk) {
        const int32_t m = (n - start) < chunk ? (n - start) : chunk;
        for (int32_t i = 0; i < m; i++) {
            token[i]    = tokens[start + i];
            pos[i]      = pos0 + start + i;
            n_seq_id[i] = 1;
            seq_ptr[i]  = &seq_one;
            logits[i]   = (start + i == n - 1);
        }
        llama_batch batch = { m, token, NULL, pos, n_seq_id, seq_ptr, logits };
        const int32_t rc = llama_decode(ctx, batch);
        if (rc != 0) {
            if (llama_rc) {
                *llama_rc = rc;
            }
            status = OURO_ERR_DECODE;
            goto done;
        }
    }
    if (argmax_last) {
        const float * last = llama_get_logits_ith(ctx, -1);
        if (last == NULL) {
            status = OURO_ERR_NO_LOGITS;
            goto done;
        }
        *argmax_last = ouro_argmax(last, n_vocab);
    }
done:
    if (status != OURO_OK) {
        llama_memory_seq_rm(mem, seq, pos0, -1);  /* earlier chunks, and what a fatal rc left */
    }
    free(token); free(pos); free(n_seq_id); free(seq_ptr); free(logits);
    return status;
}

float * ouro_logits_last(struct llama_context * ctx) {
    return ctx == NULL ? NULL : llama_get_logits_ith(ctx, -1);
}

int32_t ouro_rollback(struct llama_context * ctx, llama_pos pos) {
    if (ctx == NULL || pos < 0) {
        return OURO_ERR_ARGUMENT;
    }
    llama_memory_t mem = llama_get_memory(ctx);
    if (pos > llama_memory_seq_pos_max(mem, 0) + 1) {
        return OURO_ERR_BAD_POSITION;
    }
    return keep_trunk_before(mem, pos);
}

ouro_tree * ouro_tree_init(struct llama_context * ctx, int32_t max_nodes, int32_t max_paths) {
    if (ctx == NULL || max_nodes < 0 || (int64_t) max_nodes >= (int64_t) llama_n_batch(ctx) ||
        max_paths < 1 || (uint32_t) max_paths > llama_n_seq_max(ctx)) {
        return NULL;
    }
    const size_t e = (size_t) max_nodes + 1;
    if ((size_t) max_paths > SIZE_MAX / sizeof(llama_seq_id) / e) {
        return NULL;
    }
    ouro_tree * t = calloc(1, sizeof(ouro_tree));
    if (t == NULL) {
        return NULL;
    }
    t->ctx         = ctx;
    t->max_entries = (int32_t) e;
    t->max_paths   = max_paths;
    t->n_vocab     = ouro_n_vocab(ctx);
    t->token     = malloc(sizeof(llama_token) * e);
    t->pos       = malloc(sizeof(llama_pos) * e);
    t->n_seq_id  = malloc(sizeof(int32_t) * e);
    t->seq_id    = malloc(sizeof(llama_seq_id *) * e);
    t->seq_store = malloc(sizeof(llama_seq_id) * e * (size_t) max_paths);
    t->logits    = malloc(sizeof(int8_t) * e);
    t->parent    = malloc(sizeof(int32_t) * e);
    t->argmax    = malloc(sizeof(llama_token) * e);
    if (!t->token || !t->pos || !t->n_seq_id || !t->seq_id || !t->seq_store || !t->logits ||
        !t->parent || !t->argmax) {
        ouro_tree_free(t);
        return NULL;
    }
    for (size_t i = 0; i < e; i++) {
        t->seq_id[i] = t->seq_store + i * (size_t) max_paths;
    }
    return t;
}

void ouro_tree_free(ouro_tree * t) {
    if (t == NULL) {
        return;
    }
    free(t->token); free(t->pos); free(t->n_seq_id); free(t->seq_id); free(t->seq_store);
    free(t->logits); free(t->parent); free(t->argmax);
    free(t);
}

/* Checks everything llama_decode would reject (or abort on) and fills the batch arrays. */
static int32_t tree_build(ouro_tree * t, llama_token root, llama_pos pos_root,
                          const llama_token * tokens, const int32_t * parents, int32_t n_nodes) {
    if (n_nodes >= t->max_entries || (int64_t) n_nodes >= (int64_t) llama_n_batch(t->ctx)) {
        return OURO_ERR_TOO_MANY_NODES;
    }
    const int32_t n_entries = n_nodes + 1;
    if (root < 0 || root >= t->n_vocab) {
        return OURO_ERR_BAD_TOKEN;
    }
    t->token[0]  = root;
    t->pos[0]    = pos_root;
    t->parent[0] = -1;
    llama_pos max_pos = pos_root;
    for (int32_t i = 0; i < n_nodes; i++) {
        const int32_t p = parents[i];
        if (p < -1 || p >= i) {
            return OURO_ERR_BAD_PARENT;
        }
        if (tokens[i] < 0 || tokens[i] >= t->n_vocab) {
            return OURO_ERR_BAD_TOKEN;
        }
        t->token[i + 1]  = tokens[i];
        t->parent[i + 1] = p + 1;
        t->pos[i + 1]    = t->pos[p + 1] + 1;
        if (t->pos[i + 1] > max_pos) {
            max_pos = t->pos[i + 1];
        }
    }
    if (max_pos >= (llama_pos) llama_n_ctx(t->ctx)) {
        return OURO_ERR_CONTEXT_FULL;
    }

    /* A leaf is an entry that is nobody's parent; the root is a leaf of an empty tree. */
    int32_t n_paths = 0;
    for (int32_t i = 0; i < n_entries; i++) {
        t->n_seq_id[i] = 0;
        t->logits[i]   = 1;
    }
    for (int32_t i = 0; i < n_entries; i++) {
        int32_t is_leaf = 1;
        for (int32_t j = i + 1; j < n_entries && is_leaf; j++) {
            is_leaf = t->parent[j] != i;
        }
        if (!is_leaf) {
            continue;
        }
        if (n_paths >= t->max_paths || n_paths >= (int32_t) llama_n_seq_max(t->ctx)) {
            return OURO_ERR_TOO_MANY_PATHS;
        }
        for (int32_t a = i; a >= 0; a = t->parent[a]) {
            t->seq_id[a][t->n_seq_id[a]++] = n_paths;
        }
        n_paths++;
    }
    t->n_paths   = n_paths;
    t->n_entries = n_entries;
    t->pos_root  = pos_root;
    return OURO_OK;
}

/* The argmax of every entry's logits; OURO_ERR_NO_LOGITS if llama.cpp has no row for one. */
static int32_t tree_argmaxes(ouro_tree * t) {
    for (int32_t i = 0; i < t->n_entries; i++) {
        const float * row = llama_get_logits_ith(t->ctx, i);
        if (row == NULL) {
            return OURO_ERR_NO_LOGITS;
        }
        t->argmax[i] = ouro_argmax(row, t->n_vocab);
    }
    return OURO_OK;
}

int32_t ouro_tree_discard(ouro_tree * t) {
    if (t == NULL) {
        return OURO_ERR_ARGUMENT;
    }
    if (!t->decoded) {
        return OURO_OK;
    }
    t->decoded = 0;
    return keep_trunk_before(llama_get_memory(t->ctx), t->pos_root);
}

int32_t ouro_tree_decode(ouro_tree * t, llama_token root, llama_pos pos_root,
                         const llama_token * tokens, int32_t n_tokens,
                         const int32_t * parents, int32_t n_parents) {
    if (t == NULL || n_tokens < 0 || n_parents != n_tokens ||
        (n_tokens > 0 && (tokens == NULL || parents == NULL))) {
        return OURO_ERR_ARGUMENT;
    }
    const int32_t rc_discard = ouro_tree_discard(t);
    if (rc_discard != OURO_OK) {
        return rc_discard;
    }
    llama_memory_t mem = llama_get_memory(t->ctx);
    if (pos_root != llama_memory_seq_pos_max(mem, 0) + 1) {
        return OURO_ERR_BAD_POSITION;
    }
    const int32_t rc_build = tree_build(t, root, pos_root, tokens, parents, n_tokens);
    if (rc_build != OURO_OK) {
        return rc_build;
    }
    /* Branch sequences are cleared, then each branch path starts as a fresh copy of the trunk
     * (coupled sequences must agree); the copies share the trunk's cells. */
    llama_memory_seq_keep(mem, 0);
    if (!fits_in_cache(t->ctx, t->n_entries)) {
        return OURO_ERR_CONTEXT_FULL;
    }
    for (llama_seq_id s = 1; s < t->n_paths; s++) {
        llama_memory_seq_cp(mem, 0, s, -1, -1);
    }
    llama_batch batch = { t->n_entries, t->token, NULL, t->pos, t->n_seq_id, t->seq_id, t->logits };
    t->last_decode_rc = llama_decode(t->ctx, batch);
    /* rc < -1 may leave processed ubatches behind: a failure drops them and the branch copies. */
    const int32_t status = t->last_decode_rc != 0 ? OURO_ERR_DECODE : tree_argmaxes(t);
    if (status != OURO_OK) {
        keep_trunk_before(mem, pos_root);
        return status;
    }
    t->decoded = 1;
    return OURO_OK;
}

const llama_token * ouro_tree_argmax(const ouro_tree * t) { return t == NULL ? NULL : t->argmax; }

float * ouro_tree_logits(ouro_tree * t, int32_t entry) {
    if (t == NULL || !t->decoded || entry < 0 || entry >= t->n_entries) {
        return NULL;
    }
    return llama_get_logits_ith(t->ctx, entry);
}

int32_t ouro_tree_n_paths(const ouro_tree * t) { return t == NULL ? 0 : t->n_paths; }

int32_t ouro_tree_last_decode_rc(const ouro_tree * t) { return t == NULL ? 0 : t->last_decode_rc; }

int32_t ouro_tree_accept_greedy(const ouro_tree * t, int32_t * path, int32_t * n_path,
                                llama_token * next_token) {
    if (t == NULL || path == NULL || n_path == NULL || next_token == NULL) {
        return OURO_ERR_ARGUMENT;
    }
    if (!t->decoded) {
        return OURO_ERR_STATE;
    }
    int32_t cur = 0;
    int32_t n   = 0;
    for (;;) {
        int32_t next = -1;
        for (int32_t j = cur + 1; j < t->n_entries; j++) {
            if (t->parent[j] == cur && t->token[j] == t->argmax[cur]) {
                next = j;
                break;
            }
        }
        if (next < 0) {
            break;
        }
        path[n++] = next - 1;
        cur = next;
    }
    *n_path     = n;
    *next_token = t->argmax[cur];
    return OURO_OK;
}

int32_t ouro_tree_commit(ouro_tree * t, int32_t last_node) {
    if (t == NULL) {
        return OURO_ERR_ARGUMENT;
    }
    if (!t->decoded || last_node < -1 || last_node >= t->n_entries - 1) {
        return OURO_ERR_STATE;
    }
    llama_memory_t mem = llama_get_memory(t->ctx);
    const int32_t      entry = last_node + 1;
    const llama_seq_id keep  = t->seq_id[entry][0];
    t->decoded = 0;
    if (keep == 0) {
        /* the accepted path is on the trunk: drop everything after it and every branch */
        return keep_trunk_before(mem, t->pos[entry] + 1);
    }
    /* The accepted path is a branch. Keeping its cells (seq_keep + seq_cp to 0) is what the
     * metadata needs, but with flash attention later tokens then attend to them slightly
     * differently than to cells decoded on the trunk (measured with llama.cpp of
     * llama-cpp-python 0.3.36: up to 0.65 logit on a Q4_1 model, 0.005 on F32; exact without
     * flash attention). So drop the whole tree but the root and decode the accepted path again
     * on sequence 0, a chain of at most depth tokens; the caller already has its argmaxes. */
    int32_t n = 0;
    for (int32_t a = entry; a > 0; a = t->parent[a]) {
        n++;
    }
    const int32_t rc_drop = keep_trunk_before(mem, t->pos_root + 1);
    if (rc_drop != OURO_OK) {
        return rc_drop;
    }
    llama_token path[n > 0 ? n : 1];
    for (int32_t a = entry, i = n - 1; a > 0; a = t->parent[a], i--) {
        path[i] = t->token[a];
    }
    int32_t rc = 0;
    const int32_t status = ouro_decode_chain(t->ctx, path, n, t->pos_root + 1, 0, NULL, &rc);
    if (status != OURO_OK) {
        t->last_decode_rc = rc;
        keep_trunk_before(mem, t->pos_root);  /* as before the decode: the prefix only */
        return status;
    }
    return OURO_OK;
}
