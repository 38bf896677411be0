// Internals shared by tokenizer.c (encode/decode), tok_json.c (tokenizer.json) and
// tok_train.c (training). Not part of the public API.
#ifndef MOE_TOK_INTERNAL_H
#define MOE_TOK_INTERNAL_H

#define PCRE2_CODE_UNIT_WIDTH 8
#include <pcre2.h>
#include <stdint.h>

#include "tokenizer.h"

// ---------------------------------------------------------------------------------------
// Pre-tokenizer steps (HF PreTokenizer subset), applied in order to a list of pieces.

typedef enum {
    TOK_SPLIT_ISOLATED = 0,
    TOK_SPLIT_REMOVED,
    TOK_SPLIT_MERGED_PREV,
    TOK_SPLIT_MERGED_NEXT,
    TOK_SPLIT_CONTIGUOUS,
} TokSplitBehavior;

typedef enum {
    TOK_STEP_SPLIT = 0,   // regex (or literal string) split
    TOK_STEP_DIGITS,      // HF Digits: numeric chars isolated (individual) or contiguous
    TOK_STEP_BYTELEVEL,   // HF ByteLevel: optional prefix space, optional GPT-2 regex split
} TokStepKind;

typedef struct {
    TokStepKind kind;
    char *pattern;          // SPLIT: pattern text as in the file (regex or literal)
    int is_regex;           // SPLIT: 1 = {"Regex": ...}, 0 = {"String": ...}
    TokSplitBehavior behavior;
    int invert;
    int individual_digits;  // DIGITS
    int add_prefix_space;   // BYTELEVEL
    int use_regex;          // BYTELEVEL
    int trim_offsets;       // BYTELEVEL (kept for saving only)
    pcre2_code *re;         // compiled (SPLIT regex / literal, DIGITS, BYTELEVEL with use_regex)
} TokStep;

// ---------------------------------------------------------------------------------------
// Hash map: byte string -> int32 (vocab), open addressing, keys stored by pointer+len.

typedef struct {
    const char *key;
    uint32_t len;
    int32_t value;
} TokStrSlot;

typedef struct {
    TokStrSlot *slots;
    size_t cap, n;  // cap: power of two
} TokStrMap;

uint64_t tok_hash_bytes(const void *p, size_t n);
int tok_strmap_init(TokStrMap *m, size_t expected);
void tok_strmap_free(TokStrMap *m);
// insert or overwrite; the key memory must outlive the map. 0 or -1 (out of memory).
int tok_strmap_put(TokStrMap *m, const char *key, size_t len, int32_t value);
int32_t tok_strmap_get(const TokStrMap *m, const char *key, size_t len);  // -1 when absent

// Hash map: (a, b) pair -> (rank, merged id).
typedef struct {
    uint64_t key;  // (a << 32 | b) + 1, 0 = empty
    int32_t rank;
    int32_t id;
} TokPairSlot;

typedef struct {
    TokPairSlot *slots;
    size_t cap, n;
} TokPairMap;

static inline uint64_t tok_mix64(uint64_t x) {
    x ^= x >> 33;
    x *= 0xff51afd7ed558ccdULL;
    x ^= x >> 33;
    x *= 0xc4ceb9fe1a85ec53ULL;
    x ^= x >> 33;
    return x;
}

// ---------------------------------------------------------------------------------------
// The tokenizer

typedef struct {
    char *content;   // raw bytes (UTF-8 as in the file)
    uint32_t len;
    int32_t id;
    int special;
    int single_word, lstrip, rstrip, normalized;
} TokAdded;

struct Tokenizer {
    // vocabulary: id -> bytes (decoded from the byte-level unicode form), and its text form
    int32_t vocab_size;          // max id + 1
    char **tok_bytes;            // (vocab_size) NULL for holes
    uint32_t *tok_len;           // (vocab_size)
    char **tok_text;             // (vocab_size) the token string as written in tokenizer.json (UTF-8)
    uint8_t *is_special;         // (vocab_size)
    uint8_t *is_added;           // (vocab_size)
    uint8_t *is_pure;            // (vocab_size) token text is all byte-level characters
    uint8_t *in_model;           // (vocab_size) listed in model.vocab (written back there)
    TokStrMap bytes_to_id;       // token bytes -> id (model vocab only)
    int32_t byte_id[256];        // id of the single-byte token, -1 when missing

    // merges
    int32_t n_merges;
    int32_t (*merges)[3];        // (n_merges, 3) ids a, b and the merged token, rank order
    TokPairMap merge_map;
    int ignore_merges;
    int32_t unk_id;              // -1 when none
    int fuse_unk;

    // pre-tokenizer
    TokStep *steps;
    int n_steps;
    int pretok_is_sequence;      // 1: written as Sequence, 0: a single step
    char pretok_name[128];

    // added tokens (matched before pre-tokenization), longest content first for matching
    TokAdded *added;
    int n_added;

    int bos_id, eos_id, pad_id;

    // extra fields to write back (decoder/post_processor kept as JSON text when loaded)
    char *post_processor_json;   // NULL -> null

    TokEncoder *enc;             // the default encoder of tokenizer_encode()
};

// GPT-2 byte <-> unicode map
void tok_byte_to_unicode(uint32_t cp_of_byte[256]);
// code point -> byte, -1 when the code point is not in the map
int tok_unicode_to_byte(uint32_t cp);
// Convert byte-level text (UTF-8 of mapped code points) to raw bytes. Characters outside the
// map make the whole token be taken as its own UTF-8 bytes (HF ByteLevel decoder rule).
// out must hold n bytes. Returns the number of bytes written.
size_t tok_text_to_bytes(const char *text, size_t n, char *out);
// 1 when every character of text is in the byte-level map (so the bytes map back exactly)
int tok_text_is_bytelevel(const char *text, size_t n);
// Raw bytes -> byte-level text (malloc'd, NUL-terminated); NULL on out of memory.
char *tok_bytes_to_text(const char *bytes, size_t n);

// UTF-8: length of the valid sequence starting at p (1..4), or 0 when invalid (Rust rules).
int tok_utf8_valid_len(const unsigned char *p, size_t n);

// Build the derived tables after vocab/merges/steps/added are set (byte_id, merge_map,
// regexes, default encoder). 0 or -1.
int tok_finalize(Tokenizer *tok, const char *name, MoeErr *err);
// Allocate the per-id arrays for vocab_size ids (all zero / NULL). 0 or -1.
int tok_alloc_vocab(Tokenizer *tok, int32_t vocab_size);
// Set token id from its tokenizer.json text (copied); bytes derived by the byte-level rule.
int tok_set_token_text(Tokenizer *tok, int32_t id, const char *text, size_t n);
// Compile a pre-tokenizer step's regex. 0 or -1.
int tok_step_compile(TokStep *st, const char *name, MoeErr *err);
// Fill steps for a named pattern ("gpt2", "gpt4", "qwen", "deepseek") or a custom regex.
int tok_steps_for_pattern(Tokenizer *tok, const char *pattern, MoeErr *err);
// Pre-split one valid-UTF-8 segment with the steps; calls fn for each final piece.
// Used by both encoding and training. Returns 0 or -1 (out of memory).
typedef void (*TokPieceFn)(void *ctx, const char *p, size_t n);
typedef struct {
    int32_t *off, *len;
    uint8_t *match;
    size_t n, cap;
} TokPieceList;
typedef struct {
    TokPieceList cur, nxt, parts;
    pcre2_match_data *md;
    char *scratch;  // text with prefix spaces (ByteLevel add_prefix_space)
    size_t scratch_cap;
} TokSplitter;
int tok_splitter_init(TokSplitter *sp);
void tok_splitter_free(TokSplitter *sp);
// Run the steps over text[0..n) (any bytes); invalid UTF-8 bytes become single-byte pieces.
// Returns the number of invalid sequences, or -1 on out of memory.
int64_t tok_presplit(const Tokenizer *tok, TokSplitter *sp, const char *text, size_t n, TokPieceFn fn, void *ctx);

#endif
