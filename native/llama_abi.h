/*
 * llama_abi.h - the few declarations of llama.h (llama.cpp 0c1e570, as vendored by
 * llama-cpp-python 0.3.36) that ouro.c uses.
 *
 * We do not compile llama.cpp a second time and do not need its headers at build time:
 * ouro.c is linked with its llama symbols left undefined and they are resolved at load time
 * from the libllama that `import llama_cpp` already mapped (ouroboros_lite/native.py promotes
 * that library to the global namespace before loading ours).
 *
 * These declarations must match the pinned llama.h exactly. tests/test_native_abi.py checks
 * the struct layout against llama_cpp's ctypes view and makes real calls through it.
 */
#ifndef OURO_LLAMA_ABI_H
#define OURO_LLAMA_ABI_H

#include <stdbool.h>
#include <stdint.h>

typedef int32_t llama_pos;
typedef int32_t llama_token;
typedef int32_t llama_seq_id;

struct llama_model;
struct llama_context;
struct llama_vocab;
typedef struct llama_memory_i * llama_memory_t;

/* Input data for llama_decode. One entry per token; seq_id[i] lists the n_seq_id[i] sequences
 * the token belongs to; logits[i] != 0 requests an output row for entry i. */
typedef struct llama_batch {
    int32_t n_tokens;
    llama_token  *  token;
    float        *  embd;
    llama_pos    *  pos;
    int32_t      *  n_seq_id;
    llama_seq_id ** seq_id;
    int8_t       *  logits;
} llama_batch;

/* 0 ok; 1 no KV slot (memory unchanged); 2 aborted; -1 invalid batch; < -1 fatal */
int32_t llama_decode(struct llama_context * ctx, struct llama_batch batch);
float * llama_get_logits_ith(struct llama_context * ctx, int32_t i);

const struct llama_model * llama_get_model(const struct llama_context * ctx);
const struct llama_vocab * llama_model_get_vocab(const struct llama_model * model);
int32_t  llama_vocab_n_tokens(const struct llama_vocab * vocab);
uint32_t llama_n_ctx(const struct llama_context * ctx);
uint32_t llama_n_batch(const struct llama_context * ctx);
uint32_t llama_n_seq_max(const struct llama_context * ctx);

llama_memory_t llama_get_memory(const struct llama_context * ctx);
/* Ranges are [p0, p1); a negative bound is open; seq_id < 0 in seq_rm matches every sequence. */
bool      llama_memory_seq_rm  (llama_memory_t mem, llama_seq_id seq_id, llama_pos p0, llama_pos p1);
void      llama_memory_seq_cp  (llama_memory_t mem, llama_seq_id src, llama_seq_id dst, llama_pos p0, llama_pos p1);
void      llama_memory_seq_keep(llama_memory_t mem, llama_seq_id seq_id);
llama_pos llama_memory_seq_pos_min(llama_memory_t mem, llama_seq_id seq_id);  /* -1: empty */
llama_pos llama_memory_seq_pos_max(llama_memory_t mem, llama_seq_id seq_id);

/* Checked by the CPU backend between graph nodes; true makes llama_decode return 2 (aborted). */
typedef bool (*ggml_abort_callback)(void * data);
void llama_set_abort_callback(struct llama_context * ctx, ggml_abort_callback abort_callback, void * data);

#endif
