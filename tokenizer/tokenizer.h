// Byte-level BPE tokenizer, compatible with Hugging Face `tokenizers` (GPT-2 style).
//
//   text bytes -> [special tokens split out] -> regex pre-split (PCRE2, UTF + UCP)
//              -> each piece's bytes mapped through the GPT-2 byte<->unicode table
//              -> BPE merges applied lowest rank first -> ids
//   ids -> token bytes (exact) -> concatenated bytes
//
// Invalid UTF-8: HF works on Rust strings, which are always valid UTF-8. We accept any byte
// string. The input is cut into maximal valid UTF-8 runs and invalid bytes; valid runs are
// pre-split by the regex as HF would; every invalid byte becomes a piece of its own (one
// byte, which byte-level BPE always encodes as its single-byte token). So on valid UTF-8 we
// give exactly HF's ids, and on ANY byte string decode(encode(x)) == x. The number of invalid
// sequences met (maximal runs of bytes that are not valid UTF-8) is counted
// (tokenizer_invalid_utf8()).
//
// Regexes: PCRE2 with UTF + UCP + MULTILINE (JIT). \p{L}, \p{N}, \s and \S are rewritten so
// that they match exactly what Oniguruma (HF's engine, newer Unicode tables) matches.
//
// Files: Hugging Face tokenizer.json (read and write). Supported: model BPE (vocab + merges,
// merges as "a b" strings or [a, b] pairs), normalizer null, pre_tokenizer ByteLevel
// (add_prefix_space, use_regex) or Sequence of Split (String/Regex pattern, behavior
// Isolated/Removed/MergedWithPrevious/MergedWithNext/Contiguous, invert), Digits
// (individual_digits) and ByteLevel; added_tokens (special or not); decoder ByteLevel.
// Anything else is refused with a message naming what is unsupported and the file.
//
// Thread safety: a Tokenizer is read-only after load/train except for the encode cache of
// tokenizer_encode(). For several threads use one TokEncoder per thread
// (tok_encoder_new) and tok_encoder_encode(); the Tokenizer may be shared.
#ifndef MOE_TOKENIZER_H
#define MOE_TOKENIZER_H

#include <stddef.h>
#include <stdint.h>

#include "../common/util.h"

typedef struct Tokenizer Tokenizer;
typedef struct TokEncoder TokEncoder;

// Pre-split patterns known by name (also accepted by name in TokTrainConfig.pattern).
// "gpt2"     : GPT-2 / RoBERTa ByteLevel(use_regex=true) pattern
// "gpt4"     : cl100k_base pattern (also Llama 3's), numbers in groups of up to 3 digits
// "deepseek" : DeepSeek LLM / DeepSeek-MoE pre-tokenizer Sequence of Split regexes + ByteLevel
// "qwen"     : Qwen2 pattern (cl100k-like, single digits)
extern const char *const TOK_PATTERN_GPT2;
extern const char *const TOK_PATTERN_GPT4;
extern const char *const TOK_PATTERN_QWEN;

// ---------------------------------------------------------------------------------------
// Load / save

// Load an HF tokenizer.json. Returns NULL and fills err (naming the file and field) on error.
// bos/eos/pad: from tokenizer_config.json in the same folder when it exists (as HF), else
// guessed from the added tokens' names (<|begin_of_text|>, <s>, DeepSeek's, ...).
Tokenizer *tokenizer_load(const char *path, MoeErr *err);
// The same from a JSON text in memory; `name` is used in error messages.
Tokenizer *tokenizer_load_json(const char *json, size_t n, const char *name, MoeErr *err);
// Save as HF tokenizer.json (atomically: tmp + fsync + rename). 0 or -1.
int tokenizer_save(const Tokenizer *tok, const char *path, MoeErr *err);
// The JSON text that tokenizer_save writes (malloc'd, NUL-terminated), NULL on error.
char *tokenizer_to_json(const Tokenizer *tok, MoeErr *err);
void tokenizer_free(Tokenizer *tok);

// ---------------------------------------------------------------------------------------
// Training

typedef struct {
    int vocab_size;                     // total: 256 byte tokens + merges + special tokens
    const char *pattern;                // "gpt2" | "gpt4" | "qwen" | "deepseek" | a PCRE2 regex
    const char *const *special_tokens;  // NULL: <|begin_of_text|>, <|end_of_text|>, <|pad|>
    int n_special;                      // number of entries in special_tokens (when not NULL)
    int64_t min_frequency;              // a pair must occur at least this often (>= 1; 0 -> 2)
    int verbose;                        // progress lines on stderr
} TokTrainConfig;

// Defaults: vocab_size 8192 (total), pattern "gpt4", the three default special tokens,
// min_frequency 2, verbose 0.
void tok_train_config_default(TokTrainConfig *cfg);

// Streaming trainer: feed documents (byte strings, any bytes) one at a time; only the counts
// of distinct pre-split pieces are kept, so tens of MB of text are fine. Ties between pairs
// of equal count are broken deterministically (the smallest (left id, right id) pair first;
// ids 0..255 are the bytes, merged tokens follow in merge order), so the result does not
// depend on feeding order or chunking (at piece boundaries). Special tokens get the last ids.
typedef struct TokTrainer TokTrainer;
TokTrainer *tok_trainer_new(const TokTrainConfig *cfg, MoeErr *err);
int tok_trainer_feed(TokTrainer *tr, const void *text, size_t n, MoeErr *err);
// Run the merges and build the tokenizer. The trainer can be freed afterwards.
Tokenizer *tok_trainer_finish(TokTrainer *tr, MoeErr *err);
void tok_trainer_free(TokTrainer *tr);
// Convenience: train on n_texts byte strings.
Tokenizer *tokenizer_train(const char *const *texts, const size_t *lens, size_t n_texts, const TokTrainConfig *cfg,
                           MoeErr *err);

// ---------------------------------------------------------------------------------------
// Encode / decode

// Growable id buffer; encode functions APPEND to it. Zero-initialise before first use.
typedef struct {
    int32_t *ids;
    size_t n, cap;
} TokIds;
void tok_ids_free(TokIds *ids);

enum {
    // Also recognise SPECIAL added tokens written in the text (HF `tokenizers`' default).
    // Without the flag special tokens in the text are plain text (HF with
    // encode_special_tokens=True), which is what training data wants: "<|end_of_text|>"
    // inside a document is just text. Non-special added tokens are always split out, as HF.
    TOK_ENCODE_SPECIAL = 1,
};

// Encode n bytes (any bytes, NUL included) and append the ids to out. 0 or -1 (out of memory).
// Not thread-safe (uses the tokenizer's own cache); see TokEncoder.
int tokenizer_encode(Tokenizer *tok, const void *text, size_t n, int flags, TokIds *out, MoeErr *err);
// Per-thread encoder with its own cache and regex match data.
TokEncoder *tok_encoder_new(const Tokenizer *tok, MoeErr *err);
int tok_encoder_encode(TokEncoder *enc, const void *text, size_t n, int flags, TokIds *out, MoeErr *err);
int64_t tok_encoder_invalid_utf8(const TokEncoder *enc);
void tok_encoder_free(TokEncoder *enc);

// Decode ids to the exact bytes: malloc'd buffer (NUL-terminated, *n_out excludes the NUL).
// skip_special: leave out special tokens. -1 when an id is out of range.
int tokenizer_decode(const Tokenizer *tok, const int32_t *ids, size_t n, int skip_special, char **out,
                     size_t *n_out, MoeErr *err);
// Bytes of one token (for streaming output); pointer into the tokenizer, not NUL-terminated.
// NULL (and *len = 0) when id is out of range.
const char *tokenizer_token_bytes(const Tokenizer *tok, int32_t id, size_t *len);

// ---------------------------------------------------------------------------------------
// Queries

int tokenizer_vocab_size(const Tokenizer *tok);  // max id + 1 (byte tokens, merges, added tokens)
int tokenizer_n_merges(const Tokenizer *tok);
int tokenizer_bos_id(const Tokenizer *tok);      // -1 when absent
int tokenizer_eos_id(const Tokenizer *tok);      // -1 when absent
int tokenizer_pad_id(const Tokenizer *tok);      // -1 when absent
// Override (e.g. from tokenizer_config.json); -1 clears. 0 or -1 when id out of range.
int tokenizer_set_special_ids(Tokenizer *tok, int bos, int eos, int pad);
int tokenizer_is_special(const Tokenizer *tok, int32_t id);
// Id of a token given by its raw bytes (e.g. "<|end_of_text|>", or " the"), -1 when absent.
int32_t tokenizer_token_id(const Tokenizer *tok, const char *bytes, size_t len);
// Invalid UTF-8 sequences seen by tokenizer_encode() since load (or the last reset).
int64_t tokenizer_invalid_utf8(const Tokenizer *tok);
void tokenizer_reset_invalid_utf8(Tokenizer *tok);
// One-line description of the pre-tokenizer (for `tokenizer stats`).
const char *tokenizer_pretok_name(const Tokenizer *tok);

#endif
