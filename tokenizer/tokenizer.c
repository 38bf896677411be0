// Byte-level BPE: byte<->unicode map, UTF-8 validation, PCRE2 pre-splitting (HF
// pre-tokenizer semantics), BPE merges by rank with a per-encoder cache, decoding.
#include <limits.h>
#include <stdlib.h>
#include <string.h>

#include "tok_internal.h"

// ---------------------------------------------------------------------------------------
// Named patterns

const char *const TOK_PATTERN_GPT2 =
    "'s|'t|'re|'ve|'m|'ll|'d| ?\\p{L}+| ?\\p{N}+| ?[^\\s\\p{L}\\p{N}]+|\\s+(?!\\S)|\\s+";
const char *const TOK_PATTERN_GPT4 =
    "(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\\r\\n\\p{L}\\p{N}]?\\p{L}+|\\p{N}{1,3}| ?[^\\s\\p{L}\\p{N}]+[\\r\\n]*|"
    "\\s*[\\r\\n]+|\\s+(?!\\S)|\\s+";
const char *const TOK_PATTERN_QWEN =
    "(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\\r\\n\\p{L}\\p{N}]?\\p{L}+|\\p{N}| ?[^\\s\\p{L}\\p{N}]+[\\r\\n]*|"
    "\\s*[\\r\\n]+|\\s+(?!\\S)|\\s+";

// DeepSeek LLM / DeepSeek-MoE (deepseek-llm-7b-base, deepseek-moe-16b-base tokenizer.json):
// Sequence of five Split(Isolated) regexes, Digits(individual_digits), ByteLevel(use_regex=false).
static const char *const DS_SPLITS[5] = {
    "[\r\n]",
    "\\s?[A-Za-z\u00B5\u00C0-\u00D6\u00D8-\u00F6\u00F8-\u01BA\u01BC-\u01BF\u01C4-\u0293\u0295-\u02AF"
    "\u0370-\u0373\u0376\u0377\u037B-\u037D\u037F\u0386\u0388-\u038A\u038C\u038E-\u03A1\u03A3-\u03F5"
    "\u03F7-\u0481\u048A-\u052F\u0531-\u0556\u10A0-\u10C5\u13A0-\u13F5\u13F8-\u13FD\u1C90-\u1CBA"
    "\u1CBD-\u1CBF\u1D00-\u1D2B\u1D6B-\u1D77\u1D79-\u1D9A\u1E00-\u1F15\u1F18-\u1F1D\u1F20-\u1F45"
    "\u1F48-\u1F4D\u1F50-\u1F57\u1F59\u1F5B\u1F5D\u1F5F-\u1F7D\u1F80-\u1FB4\u1FB6-\u1FBC\u1FBE"
    "\u1FC2-\u1FC4\u1FC6-\u1FCC\u1FD0-\u1FD3\u1FD6-\u1FDB\u1FE0-\u1FEC\u1FF2-\u1FF4\u1FF6-\u1FFC"
    "\u2102\u2107\u210A-\u2113\u2115\u2119-\u211D\u2124\u2126\u2128\u212A-\u212D\u212F-\u2134"
    "\u2139\u213C-\u213F\u2145-\u2149\u214E\u2183\u2184\u2C00-\u2C7B\u2C7E-\u2CE4\u2CEB-\u2CEE"
    "\u2CF2\u2CF3\uA640-\uA66D\uA680-\uA69B\uA722-\uA76F\uA771-\uA787\uA78B-\uA78E\uAB70-\uABBF"
    "\uFB00-\uFB06\uFB13-\uFB17\uFF21-\uFF3A\uFF41-\uFF5A\U00010400-\U0001044F\U000104B0-\U000104D3"
    "\U000104D8-\U000104FB\U00010C80-\U00010CB2\U00010CC0-\U00010CF2\U000118A0-\U000118DF"
    "\U0001E900-\U0001E943]+",
    "\\s?[!-/:-~\uFF01-\uFF0F\uFF1A-\uFF5E\u2018-\u201F\u3000-\u3002]+",
    "\\s+$",
    "[\u4E00-\u9FA5\u0800-\u4E00\uAC00-\uD7FF]+",
};

// ---------------------------------------------------------------------------------------
// GPT-2 byte <-> unicode map: printable Latin-1 bytes map to themselves, the other 68 bytes
// to U+0100.. in byte order (so space 0x20 -> U+0120 'Ġ', newline 0x0A -> U+010A 'Ċ').

static int tok_byte_printable(int b) { return (b >= 0x21 && b <= 0x7E) || (b >= 0xA1 && b <= 0xAC) || (b >= 0xAE && b <= 0xFF); }

void tok_byte_to_unicode(uint32_t cp_of_byte[256]) {
    uint32_t next = 256;
    for (int b = 0; b < 256; b++) cp_of_byte[b] = tok_byte_printable(b) ? (uint32_t)b : next++;
}

int tok_unicode_to_byte(uint32_t cp) {
    if (cp < 256) return tok_byte_printable((int)cp) ? (int)cp : -1;
    if (cp >= 256 + 68) return -1;
    int k = (int)(cp - 256);  // k-th non-printable byte
    for (int b = 0; b < 256; b++) {
        if (!tok_byte_printable(b) && k-- == 0) return b;
    }
    return -1;
}

// decode one UTF-8 code point (input known valid); returns its length
static int utf8_decode(const unsigned char *p, size_t n, uint32_t *cp) {
    if (n >= 1 && p[0] < 0x80) { *cp = p[0]; return 1; }
    if (n >= 2 && (p[0] & 0xE0) == 0xC0) { *cp = ((uint32_t)(p[0] & 0x1F) << 6) | (p[1] & 0x3F); return 2; }
    if (n >= 3 && (p[0] & 0xF0) == 0xE0) {
        *cp = ((uint32_t)(p[0] & 0x0F) << 12) | ((uint32_t)(p[1] & 0x3F) << 6) | (p[2] & 0x3F);
        return 3;
    }
    if (n >= 4 && (p[0] & 0xF8) == 0xF0) {
        *cp = ((uint32_t)(p[0] & 0x07) << 18) | ((uint32_t)(p[1] & 0x3F) << 12) | ((uint32_t)(p[2] & 0x3F) << 6) |
              (p[3] & 0x3F);
        return 4;
    }
    *cp = 0xFFFD;
    return 1;
}

static int utf8_encode(uint32_t cp, char *out) {
    if (cp < 0x80) { out[0] = (char)cp; return 1; }
    if (cp < 0x800) { out[0] = (char)(0xC0 | (cp >> 6)); out[1] = (char)(0x80 | (cp & 0x3F)); return 2; }
    if (cp < 0x10000) {
        out[0] = (char)(0xE0 | (cp >> 12));
        out[1] = (char)(0x80 | ((cp >> 6) & 0x3F));
        out[2] = (char)(0x80 | (cp & 0x3F));
        return 3;
    }
    out[0] = (char)(0xF0 | (cp >> 18));
    out[1] = (char)(0x80 | ((cp >> 12) & 0x3F));
    out[2] = (char)(0x80 | ((cp >> 6) & 0x3F));
    out[3] = (char)(0x80 | (cp & 0x3F));
    return 4;
}

int tok_utf8_valid_len(const unsigned char *p, size_t n) {
    if (n == 0) return 0;
    unsigned char b0 = p[0];
    if (b0 < 0x80) return 1;
    int need;
    unsigned char lo = 0x80, hi = 0xBF;
    if (b0 >= 0xC2 && b0 <= 0xDF) need = 1;
    else if (b0 == 0xE0) { need = 2; lo = 0xA0; }
    else if ((b0 >= 0xE1 && b0 <= 0xEC) || b0 == 0xEE || b0 == 0xEF) need = 2;
    else if (b0 == 0xED) { need = 2; hi = 0x9F; }
    else if (b0 == 0xF0) { need = 3; lo = 0x90; }
    else if (b0 >= 0xF1 && b0 <= 0xF3) need = 3;
    else if (b0 == 0xF4) { need = 3; hi = 0x8F; }
    else return 0;
    if ((size_t)need >= n) return 0;
    if (p[1] < lo || p[1] > hi) return 0;
    for (int k = 2; k <= need; k++)
        if (p[k] < 0x80 || p[k] > 0xBF) return 0;
    return need + 1;
}

size_t tok_text_to_bytes(const char *text, size_t n, char *out) {
    const unsigned char *p = (const unsigned char *)text;
    size_t i = 0, o = 0;
    while (i < n) {
        int l = tok_utf8_valid_len(p + i, n - i);
        if (l == 0) break;
        uint32_t cp;
        utf8_decode(p + i, n - i, &cp);
        int b = tok_unicode_to_byte(cp);
        if (b < 0) break;
        out[o++] = (char)b;
        i += (size_t)l;
    }
    if (i == n) return o;
    memcpy(out, text, n);  // a char outside the map: the token is its own UTF-8 (HF rule)
    return n;
}

char *tok_bytes_to_text(const char *bytes, size_t n) {
    uint32_t map[256];  // cheap to build; no shared state, so safe from any thread
    tok_byte_to_unicode(map);
    char *out = malloc(2 * n + 1);
    if (!out) return NULL;
    size_t o = 0;
    for (size_t i = 0; i < n; i++) o += (size_t)utf8_encode(map[(unsigned char)bytes[i]], out + o);
    out[o] = 0;
    return out;
}

// ---------------------------------------------------------------------------------------
// Hash maps

uint64_t tok_hash_bytes(const void *p, size_t n) {
    // FNV-1a over 8-byte words, then a final mix
    const unsigned char *s = p;
    uint64_t h = 0xcbf29ce484222325ULL ^ (uint64_t)n;
    size_t i = 0;
    for (; i + 8 <= n; i += 8) {
        uint64_t w;
        memcpy(&w, s + i, 8);
        h = (h ^ w) * 0x100000001b3ULL;
        h ^= h >> 29;
    }
    for (; i < n; i++) h = (h ^ s[i]) * 0x100000001b3ULL;
    return tok_mix64(h);
}

int tok_strmap_init(TokStrMap *m, size_t expected) {
    size_t cap = 16;
    while (cap < expected * 2 + 16) cap *= 2;
    m->slots = calloc(cap, sizeof(TokStrSlot));
    m->cap = cap;
    m->n = 0;
    return m->slots ? 0 : -1;
}

void tok_strmap_free(TokStrMap *m) {
    free(m->slots);
    m->slots = NULL;
    m->cap = m->n = 0;
}

static int strmap_grow(TokStrMap *m) {
    TokStrMap bigger;
    if (tok_strmap_init(&bigger, m->cap) != 0) return -1;
    for (size_t i = 0; i < m->cap; i++)
        if (m->slots[i].key) tok_strmap_put(&bigger, m->slots[i].key, m->slots[i].len, m->slots[i].value);
    free(m->slots);
    *m = bigger;
    return 0;
}

int tok_strmap_put(TokStrMap *m, const char *key, size_t len, int32_t value) {
    if ((m->n + 1) * 2 > m->cap && strmap_grow(m) != 0) return -1;
    size_t mask = m->cap - 1, i = tok_hash_bytes(key, len) & mask;
    while (m->slots[i].key) {
        if (m->slots[i].len == len && memcmp(m->slots[i].key, key, len) == 0) {
            m->slots[i].value = value;
            return 0;
        }
        i = (i + 1) & mask;
    }
    m->slots[i].key = key;
    m->slots[i].len = (uint32_t)len;
    m->slots[i].value = value;
    m->n++;
    return 0;
}

int32_t tok_strmap_get(const TokStrMap *m, const char *key, size_t len) {
    if (!m->slots) return -1;
    size_t mask = m->cap - 1, i = tok_hash_bytes(key, len) & mask;
    while (m->slots[i].key) {
        if (m->slots[i].len == len && memcmp(m->slots[i].key, key, len) == 0) return m->slots[i].value;
        i = (i + 1) & mask;
    }
    return -1;
}

static int pairmap_init(TokPairMap *m, size_t expected) {
    size_t cap = 16;
    while (cap < expected * 2 + 16) cap *= 2;
    m->slots = calloc(cap, sizeof(TokPairSlot));
    m->cap = cap;
    m->n = 0;
    return m->slots ? 0 : -1;
}

static inline uint64_t pair_key(int32_t a, int32_t b) { return (((uint64_t)(uint32_t)a << 32) | (uint32_t)b) + 1; }

// insert only when absent (the first merge of a pair keeps its rank... HF keeps the last;
// we follow HF: overwrite)
static void pairmap_put(TokPairMap *m, int32_t a, int32_t b, int32_t rank, int32_t id) {
    uint64_t k = pair_key(a, b);
    size_t mask = m->cap - 1, i = tok_mix64(k) & mask;
    while (m->slots[i].key && m->slots[i].key != k) i = (i + 1) & mask;
    if (!m->slots[i].key) m->n++;
    m->slots[i].key = k;
    m->slots[i].rank = rank;
    m->slots[i].id = id;
}

static inline const TokPairSlot *pairmap_get(const TokPairMap *m, int32_t a, int32_t b) {
    uint64_t k = pair_key(a, b);
    size_t mask = m->cap - 1, i = tok_mix64(k) & mask;
    while (m->slots[i].key) {
        if (m->slots[i].key == k) return &m->slots[i];
        i = (i + 1) & mask;
    }
    return NULL;
}

// ---------------------------------------------------------------------------------------
// Pattern rewriting for HF parity. HF compiles Split regexes with Oniguruma, whose Unicode
// tables are newer than PCRE2 10.42's: some recent letters and digits (Unicode 15-16
// scripts) are \p{L} / \p{N} there but not here, and PCRE2's \s also matches U+180E, which
// Oniguruma does not. So \p{L}, \p{N}, \P{L}, \P{N}, \s and \S are rewritten with explicit
// extra ranges (found by comparing both engines over every code point, tokenizers 0.23).
// Limits: \S and \P{..} inside a character class are left as they are.
static const char *const RX_EXTRA_L =
    "\\x{1c89}-\\x{1c8a}\\x{a7cb}-\\x{a7cd}\\x{a7da}-\\x{a7dc}\\x{105c0}-\\x{105f3}\\x{10d4a}-\\x{10d65}"
    "\\x{10d6f}-\\x{10d85}\\x{10ec2}-\\x{10ec4}\\x{1123f}-\\x{11240}\\x{11380}-\\x{11389}\\x{1138b}"
    "\\x{1138e}\\x{11390}-\\x{113b5}\\x{113b7}\\x{113d1}\\x{113d3}\\x{11bc0}-\\x{11be0}\\x{11f02}"
    "\\x{11f04}-\\x{11f10}\\x{11f12}-\\x{11f33}\\x{1342f}\\x{13441}-\\x{13446}\\x{13460}-\\x{143fa}"
    "\\x{16100}-\\x{1611d}\\x{16d40}-\\x{16d6c}\\x{18cff}\\x{1b132}\\x{1b155}\\x{1df25}-\\x{1df2a}"
    "\\x{1e030}-\\x{1e06d}\\x{1e4d0}-\\x{1e4eb}\\x{1e5d0}-\\x{1e5ed}\\x{1e5f0}\\x{2b739}"
    "\\x{2ebf0}-\\x{2ee5d}\\x{31350}-\\x{323af}";
static const char *const RX_EXTRA_N =
    "\\x{10d40}-\\x{10d49}\\x{116d0}-\\x{116e3}\\x{11bf0}-\\x{11bf9}\\x{11f50}-\\x{11f59}"
    "\\x{16130}-\\x{16139}\\x{16d70}-\\x{16d79}\\x{1ccf0}-\\x{1ccf9}\\x{1d2c0}-\\x{1d2d3}"
    "\\x{1e4f0}-\\x{1e4f9}\\x{1e5f1}-\\x{1e5fa}";
static const char *const RX_SPACE =
    "\\x{9}-\\x{d}\\x{20}\\x{85}\\x{a0}\\x{1680}\\x{2000}-\\x{200a}\\x{2028}-\\x{2029}\\x{202f}\\x{205f}"
    "\\x{3000}";

typedef struct {
    char *s;
    size_t n, cap;
    int oom;
} RxBuf;

static void rx_put(RxBuf *b, const char *p, size_t n) {
    if (b->oom) return;
    if (b->n + n + 1 > b->cap) {
        size_t cap = b->cap ? b->cap * 2 : 256;
        while (cap < b->n + n + 1) cap *= 2;
        char *ns = realloc(b->s, cap);
        if (!ns) {
            b->oom = 1;
            return;
        }
        b->s = ns;
        b->cap = cap;
    }
    memcpy(b->s + b->n, p, n);
    b->n += n;
    b->s[b->n] = 0;
}
static void rx_puts(RxBuf *b, const char *s) { rx_put(b, s, strlen(s)); }

// malloc'd rewritten pattern, NULL on out of memory
static char *rx_rewrite(const char *pat) {
    RxBuf b = {0};
    int in_class = 0;
    size_t n = strlen(pat);
    for (size_t i = 0; i < n; i++) {
        char c = pat[i];
        if (c == '\\' && i + 1 < n) {
            char d = pat[i + 1];
            const char *extra = NULL;
            int neg = 0;
            size_t skip = 0;
            if ((d == 'p' || d == 'P') && i + 4 < n + 1 && pat[i + 2] == '{' && (pat[i + 3] == 'L' || pat[i + 3] == 'N') &&
                pat[i + 4] == '}') {
                extra = pat[i + 3] == 'L' ? RX_EXTRA_L : RX_EXTRA_N;
                neg = d == 'P';
                skip = 5;
            } else if ((d == 'p' || d == 'P') && (pat[i + 2] == 'L' || pat[i + 2] == 'N') && i + 2 < n) {
                extra = pat[i + 2] == 'L' ? RX_EXTRA_L : RX_EXTRA_N;
                neg = d == 'P';
                skip = 3;
            }
            if (extra && !in_class) {
                rx_puts(&b, neg ? "[^\\p{" : "[\\p{");
                rx_put(&b, extra == RX_EXTRA_L ? "L" : "N", 1);
                rx_puts(&b, "}");
                rx_puts(&b, extra);
                rx_puts(&b, "]");
                i += skip - 1;
                continue;
            }
            if (extra && in_class && !neg) {
                rx_puts(&b, extra == RX_EXTRA_L ? "\\p{L}" : "\\p{N}");
                rx_puts(&b, extra);
                i += skip - 1;
                continue;
            }
            if (d == 's') {
                if (!in_class) rx_puts(&b, "[");
                rx_puts(&b, RX_SPACE);
                if (!in_class) rx_puts(&b, "]");
                i++;
                continue;
            }
            if (d == 'S' && !in_class) {
                rx_puts(&b, "[^");
                rx_puts(&b, RX_SPACE);
                rx_puts(&b, "]");
                i++;
                continue;
            }
            rx_put(&b, pat + i, 2);
            i++;
            continue;
        }
        if (!in_class && c == '[') {
            in_class = 1;
            rx_put(&b, &c, 1);
            if (i + 1 < n && pat[i + 1] == '^') rx_put(&b, pat + ++i, 1);
            if (i + 1 < n && pat[i + 1] == ']') rx_put(&b, pat + ++i, 1);  // leading ] is literal
            continue;
        }
        if (in_class && c == '[' && i + 1 < n && pat[i + 1] == ':') {  // POSIX [:name:]
            const char *e = strstr(pat + i + 2, ":]");
            if (e) {
                rx_put(&b, pat + i, (size_t)(e + 2 - (pat + i)));
                i = (size_t)(e + 1 - pat);
                continue;
            }
        }
        if (in_class && c == ']') in_class = 0;
        rx_put(&b, &c, 1);
    }
    if (!b.s) rx_put(&b, "", 0);
    if (b.oom) {
        free(b.s);
        return NULL;
    }
    return b.s;
}

// ---------------------------------------------------------------------------------------
// Pre-tokenizer steps

int tok_step_compile(TokStep *st, const char *name, MoeErr *err) {
    const char *pat = NULL;
    // MULTILINE: Oniguruma's default (Ruby) syntax, which HF uses, makes ^ and $ line anchors
    uint32_t opts = PCRE2_UTF | PCRE2_UCP | PCRE2_NO_UTF_CHECK | PCRE2_MULTILINE;
    if (st->kind == TOK_STEP_SPLIT) {
        pat = st->pattern;
        if (!st->is_regex) opts = PCRE2_UTF | PCRE2_NO_UTF_CHECK | PCRE2_LITERAL;  // UCP is not allowed here
    } else if (st->kind == TOK_STEP_DIGITS) {
        pat = st->individual_digits ? "\\p{N}" : "\\p{N}+";
    } else if (st->kind == TOK_STEP_BYTELEVEL && st->use_regex) {
        pat = TOK_PATTERN_GPT2;
    }
    if (!pat) return 0;
    int ec;
    PCRE2_SIZE eo;
    char *rw = (opts & PCRE2_LITERAL) ? strdup(pat) : rx_rewrite(pat);
    if (!rw) return moe_err_set(err, "%s: out of memory compiling a pre_tokenizer regex", name);
    st->re = pcre2_compile((PCRE2_SPTR)rw, PCRE2_ZERO_TERMINATED, opts, &ec, &eo, NULL);
    free(rw);
    if (!st->re) {
        PCRE2_UCHAR msg[256];
        pcre2_get_error_message(ec, msg, sizeof(msg));
        return moe_err_set(err, "%s: pre_tokenizer regex '%.120s' does not compile at offset %zu: %s", name, pat,
                           (size_t)eo, (const char *)msg);
    }
    pcre2_jit_compile(st->re, PCRE2_JIT_COMPLETE);  // falls back to the interpreter if JIT is unavailable
    return 0;
}

static int add_step(Tokenizer *tok, TokStep st) {
    TokStep *s = realloc(tok->steps, (size_t)(tok->n_steps + 1) * sizeof(TokStep));
    if (!s) return -1;
    tok->steps = s;
    tok->steps[tok->n_steps++] = st;
    return 0;
}

static int add_split(Tokenizer *tok, const char *regex) {
    TokStep st = {0};
    st.kind = TOK_STEP_SPLIT;
    st.pattern = strdup(regex);
    st.is_regex = 1;
    st.behavior = TOK_SPLIT_ISOLATED;
    if (!st.pattern) return -1;
    if (add_step(tok, st) != 0) {
        free(st.pattern);
        return -1;
    }
    return 0;
}

int tok_steps_for_pattern(Tokenizer *tok, const char *pattern, MoeErr *err) {
    TokStep bl = {0};
    bl.kind = TOK_STEP_BYTELEVEL;
    bl.trim_offsets = 1;
    int oom = 0;
    if (strcmp(pattern, "gpt2") == 0) {
        bl.use_regex = 1;
        oom |= add_step(tok, bl);
        tok->pretok_is_sequence = 0;
        snprintf(tok->pretok_name, sizeof(tok->pretok_name), "ByteLevel(use_regex) [gpt2]");
    } else if (strcmp(pattern, "deepseek") == 0) {
        for (int i = 0; i < 5; i++) oom |= add_split(tok, DS_SPLITS[i]);
        TokStep dg = {0};
        dg.kind = TOK_STEP_DIGITS;
        dg.individual_digits = 1;
        oom |= add_step(tok, dg);
        oom |= add_step(tok, bl);
        tok->pretok_is_sequence = 1;
        snprintf(tok->pretok_name, sizeof(tok->pretok_name), "Sequence[5 x Split, Digits, ByteLevel] [deepseek]");
    } else {
        const char *re = strcmp(pattern, "gpt4") == 0 ? TOK_PATTERN_GPT4
                         : strcmp(pattern, "qwen") == 0 ? TOK_PATTERN_QWEN
                                                        : pattern;
        oom |= add_split(tok, re);
        oom |= add_step(tok, bl);
        tok->pretok_is_sequence = 1;
        snprintf(tok->pretok_name, sizeof(tok->pretok_name), "Sequence[Split, ByteLevel] [%s]",
                 re == pattern ? "custom regex" : pattern);
    }
    if (oom) return moe_err_set(err, "tokenizer: out of memory building the pre-tokenizer");
    for (int i = 0; i < tok->n_steps; i++)
        if (!tok->steps[i].re && tok_step_compile(&tok->steps[i], "pattern", err) != 0) return -1;
    return 0;
}

// ---------------------------------------------------------------------------------------
// Splitting (HF NormalizedString::split semantics over a list of pieces)

int tok_splitter_init(TokSplitter *sp) {
    memset(sp, 0, sizeof(*sp));
    sp->md = pcre2_match_data_create(4, NULL);
    return sp->md ? 0 : -1;
}

static void pl_free(TokPieceList *pl) {
    free(pl->off);
    free(pl->len);
    free(pl->match);
}

void tok_splitter_free(TokSplitter *sp) {
    pl_free(&sp->cur);
    pl_free(&sp->nxt);
    pl_free(&sp->parts);
    free(sp->scratch);
    if (sp->md) pcre2_match_data_free(sp->md);
    memset(sp, 0, sizeof(*sp));
}

static int pl_push(TokPieceList *pl, int32_t off, int32_t len, int match) {
    if (pl->n == pl->cap) {
        size_t cap = pl->cap ? pl->cap * 2 : 256;
        int32_t *o = realloc(pl->off, cap * sizeof(int32_t));
        if (!o) return -1;
        pl->off = o;
        int32_t *l = realloc(pl->len, cap * sizeof(int32_t));
        if (!l) return -1;
        pl->len = l;
        uint8_t *m = realloc(pl->match, cap);
        if (!m) return -1;
        pl->match = m;
        pl->cap = cap;
    }
    pl->off[pl->n] = off;
    pl->len[pl->n] = len;
    pl->match[pl->n] = (uint8_t)match;
    pl->n++;
    return 0;
}

// Split one piece [off, off+len) of base with step st and append the results to out.
// As HF: find all matches (gaps between them are non-matches, empty matches count), flip
// with invert, fold by behavior, then drop empty pieces.
static int split_piece(const TokStep *st, TokSplitter *sp, const char *base, int32_t off, int32_t len,
                       TokPieceList *out) {
    TokPieceList *parts = &sp->parts;
    parts->n = 0;
    const PCRE2_SPTR subj = (PCRE2_SPTR)(base + off);
    size_t start = 0, prev = 0;
    while (start <= (size_t)len) {
        int rc = pcre2_match(st->re, subj, (size_t)len, start, PCRE2_NO_UTF_CHECK, sp->md, NULL);
        if (rc < 0) break;  // no match (or a match limit): the rest is a gap
        PCRE2_SIZE *ov = pcre2_get_ovector_pointer(sp->md);
        size_t ms = ov[0], me = ov[1];
        if (ms > prev && pl_push(parts, (int32_t)prev, (int32_t)(ms - prev), 0)) return -1;
        if (pl_push(parts, (int32_t)ms, (int32_t)(me - ms), 1)) return -1;
        prev = me;
        if (me == ms) {  // empty match: continue one character further
            if (ms >= (size_t)len) break;
            size_t adv = 1;
            while (ms + adv < (size_t)len && (subj[ms + adv] & 0xC0) == 0x80) adv++;
            start = ms + adv;
        } else {
            start = me;
        }
    }
    if (prev < (size_t)len && pl_push(parts, (int32_t)prev, (int32_t)((size_t)len - prev), 0)) return -1;
    if (st->invert)
        for (size_t i = 0; i < parts->n; i++) parts->match[i] ^= 1;

    size_t n0 = out->n;
    int prev_match = 0;
    switch (st->behavior) {
    case TOK_SPLIT_ISOLATED:
        for (size_t i = 0; i < parts->n; i++)
            if (pl_push(out, off + parts->off[i], parts->len[i], 0)) return -1;
        break;
    case TOK_SPLIT_REMOVED:
        for (size_t i = 0; i < parts->n; i++)
            if (!parts->match[i] && pl_push(out, off + parts->off[i], parts->len[i], 0)) return -1;
        break;
    case TOK_SPLIT_CONTIGUOUS:
    case TOK_SPLIT_MERGED_PREV:
        for (size_t i = 0; i < parts->n; i++) {
            int m = parts->match[i];
            int merge = st->behavior == TOK_SPLIT_CONTIGUOUS ? (m == prev_match) : (m && !prev_match);
            if (merge && out->n > n0) out->len[out->n - 1] = off + parts->off[i] + parts->len[i] - out->off[out->n - 1];
            else if (pl_push(out, off + parts->off[i], parts->len[i], 0)) return -1;
            prev_match = m;
        }
        break;
    case TOK_SPLIT_MERGED_NEXT: {
        // HF folds from the right: a match joins the part after it unless that one is a match
        size_t w = n0;
        for (size_t k = parts->n; k-- > 0;) {
            int m = parts->match[k];
            if (m && !prev_match && out->n > w) {
                int32_t end = out->off[out->n - 1] + out->len[out->n - 1];
                out->off[out->n - 1] = off + parts->off[k];
                out->len[out->n - 1] = end - out->off[out->n - 1];
            } else if (pl_push(out, off + parts->off[k], parts->len[k], 0)) {
                return -1;
            }
            prev_match = m;
        }
        for (size_t i = w, j = out->n ? out->n - 1 : 0; i < j; i++, j--) {  // reverse to text order
            int32_t t = out->off[i]; out->off[i] = out->off[j]; out->off[j] = t;
            t = out->len[i]; out->len[i] = out->len[j]; out->len[j] = t;
        }
        break;
    }
    }
    // drop empty pieces
    size_t w = n0;
    for (size_t i = n0; i < out->n; i++)
        if (out->len[i] > 0) {
            out->off[w] = out->off[i];
            out->len[w] = out->len[i];
            w++;
        }
    out->n = w;
    return 0;
}

// Run all steps over one valid UTF-8 run, calling fn for every final piece.
static int presplit_valid(const Tokenizer *tok, TokSplitter *sp, const char *text, size_t n, TokPieceFn fn,
                          void *ctx) {
    if (n == 0) return 0;
    if (n > INT32_MAX / 2) {  // pieces use int32 offsets: split huge runs (cannot happen in practice)
        size_t half = n / 2;
        while (half < n && (text[half] & 0xC0) == 0x80) half++;
        if (presplit_valid(tok, sp, text, half, fn, ctx)) return -1;
        return presplit_valid(tok, sp, text + half, n - half, fn, ctx);
    }
    // fast path: a single regex step with behavior Isolated (GPT-2 ByteLevel, or one Split +
    // ByteLevel without prefix space): matches and gaps go straight to fn
    const TokStep *only = NULL;
    int active = 0;
    for (int s = 0; s < tok->n_steps; s++) {
        const TokStep *st = &tok->steps[s];
        if (st->re || (st->kind == TOK_STEP_BYTELEVEL && st->add_prefix_space)) {
            active++;
            only = st;
        }
    }
    if (active == 1 && only->re && only->behavior == TOK_SPLIT_ISOLATED && !only->invert &&
        !(only->kind == TOK_STEP_BYTELEVEL && only->add_prefix_space)) {
        const PCRE2_SPTR subj = (PCRE2_SPTR)text;
        size_t start = 0, prev = 0;
        while (start < n) {
            int rc = pcre2_match(only->re, subj, n, start, PCRE2_NO_UTF_CHECK, sp->md, NULL);
            if (rc < 0) break;
            PCRE2_SIZE *ov = pcre2_get_ovector_pointer(sp->md);
            size_t ms = ov[0], me = ov[1];
            if (ms > prev) fn(ctx, text + prev, ms - prev);
            if (me > ms) {
                fn(ctx, text + ms, me - ms);
                prev = start = me;
            } else {  // empty match: it only cuts the gap; go on one character later
                prev = ms;
                start = ms + 1;
                while (start < n && (subj[start] & 0xC0) == 0x80) start++;
            }
        }
        if (prev < n) fn(ctx, text + prev, n - prev);
        return 0;
    }
    const char *base = text;
    sp->cur.n = 0;
    if (pl_push(&sp->cur, 0, (int32_t)n, 0)) return -1;
    for (int s = 0; s < tok->n_steps; s++) {
        const TokStep *st = &tok->steps[s];
        if (st->kind == TOK_STEP_BYTELEVEL && st->add_prefix_space) {
            // prepend ' ' to every piece that does not start with one: rebuild the text
            size_t need = 0;
            for (size_t i = 0; i < sp->cur.n; i++) need += (size_t)sp->cur.len[i] + 1;
            char *dst = malloc(need ? need : 1);  // base may be the old scratch: build first
            if (!dst) return -1;
            size_t o = 0;
            for (size_t i = 0; i < sp->cur.n; i++) {
                const char *p = base + sp->cur.off[i];
                int32_t l = sp->cur.len[i];
                int32_t start = (int32_t)o;
                if (p[0] != ' ') dst[o++] = ' ';
                memcpy(dst + o, p, (size_t)l);
                o += (size_t)l;
                sp->cur.off[i] = start;
                sp->cur.len[i] = (int32_t)o - start;
            }
            free(sp->scratch);
            sp->scratch = dst;
            sp->scratch_cap = need;
            base = sp->scratch;
        }
        if (!st->re) continue;
        sp->nxt.n = 0;
        for (size_t i = 0; i < sp->cur.n; i++)
            if (split_piece(st, sp, base, sp->cur.off[i], sp->cur.len[i], &sp->nxt)) return -1;
        TokPieceList t = sp->cur;
        sp->cur = sp->nxt;
        sp->nxt = t;
    }
    for (size_t i = 0; i < sp->cur.n; i++) fn(ctx, base + sp->cur.off[i], (size_t)sp->cur.len[i]);
    return 0;
}

int64_t tok_presplit(const Tokenizer *tok, TokSplitter *sp, const char *text, size_t n, TokPieceFn fn, void *ctx) {
    const unsigned char *p = (const unsigned char *)text;
    int64_t invalid = 0;
    size_t i = 0;
    int in_invalid = 0;
    while (i < n) {
        // maximal valid run
        size_t j = i;
        while (j < n) {
            if (p[j] < 0x80) { j++; continue; }
            int l = tok_utf8_valid_len(p + j, n - j);
            if (l == 0) break;
            j += (size_t)l;
        }
        if (j > i) {
            in_invalid = 0;
            if (presplit_valid(tok, sp, text + i, j - i, fn, ctx)) return -1;
            i = j;
        }
        if (i < n) {  // one invalid byte: a piece of its own
            if (!in_invalid) invalid++;
            in_invalid = 1;
            fn(ctx, text + i, 1);
            i++;
        }
    }
    return invalid;
}

int tok_text_is_bytelevel(const char *text, size_t n) {
    const unsigned char *p = (const unsigned char *)text;
    size_t i = 0;
    while (i < n) {
        int l = tok_utf8_valid_len(p + i, n - i);
        if (l == 0) return 0;
        uint32_t cp;
        utf8_decode(p + i, n - i, &cp);
        if (tok_unicode_to_byte(cp) < 0) return 0;
        i += (size_t)l;
    }
    return 1;
}

// ---------------------------------------------------------------------------------------
// Encoder: cache of piece -> ids, BPE by rank

typedef struct {
    uint64_t h;  // 0 = empty
    uint32_t key_off, key_len;
    uint32_t ids_off, ids_n;
} CacheSlot;

#define CACHE_MAX_PIECE 256
#define CACHE_MAX_ENTRIES (1u << 20)
#define CACHE_MAX_ARENA (64u << 20)

struct TokEncoder {
    const Tokenizer *tok;
    TokSplitter sp;
    CacheSlot *slots;
    size_t cap, n;
    char *keys;
    size_t keys_n, keys_cap;
    int32_t *cids;
    size_t cids_n, cids_cap;
    // BPE scratch
    int32_t *sym, *prv, *nxt;
    uint64_t *heap;
    size_t scratch_cap, heap_cap;
    // current call
    TokIds *out;
    int oom;
    int64_t invalid;
};

void tok_ids_free(TokIds *ids) {
    free(ids->ids);
    ids->ids = NULL;
    ids->n = ids->cap = 0;
}

static int ids_reserve(TokIds *ids, size_t extra) {
    if (ids->n + extra <= ids->cap) return 0;
    size_t cap = ids->cap ? ids->cap : 1024;
    while (cap < ids->n + extra) cap *= 2;
    int32_t *p = realloc(ids->ids, cap * sizeof(int32_t));
    if (!p) return -1;
    ids->ids = p;
    ids->cap = cap;
    return 0;
}

static void cache_reset(TokEncoder *e) {
    if (e->slots) memset(e->slots, 0, e->cap * sizeof(CacheSlot));
    e->n = 0;
    e->keys_n = 0;
    e->cids_n = 0;
}

TokEncoder *tok_encoder_new(const Tokenizer *tok, MoeErr *err) {
    TokEncoder *e = calloc(1, sizeof(TokEncoder));
    if (!e || tok_splitter_init(&e->sp) != 0) {
        free(e);
        moe_err_set(err, "tokenizer: out of memory creating an encoder");
        return NULL;
    }
    e->tok = tok;
    e->cap = 1 << 14;
    e->slots = calloc(e->cap, sizeof(CacheSlot));
    if (!e->slots) {
        tok_encoder_free(e);
        moe_err_set(err, "tokenizer: out of memory creating an encoder");
        return NULL;
    }
    return e;
}

void tok_encoder_free(TokEncoder *e) {
    if (!e) return;
    tok_splitter_free(&e->sp);
    free(e->slots);
    free(e->keys);
    free(e->cids);
    free(e->sym);
    free(e->prv);
    free(e->nxt);
    free(e->heap);
    free(e);
}

int64_t tok_encoder_invalid_utf8(const TokEncoder *e) { return e->invalid; }

static const CacheSlot *cache_find(const TokEncoder *e, const char *p, size_t n, uint64_t h) {
    size_t mask = e->cap - 1, i = h & mask;
    while (e->slots[i].h) {
        const CacheSlot *s = &e->slots[i];
        if (s->h == h && s->key_len == n && memcmp(e->keys + s->key_off, p, n) == 0) return s;
        i = (i + 1) & mask;
    }
    return NULL;
}

static void cache_insert(TokEncoder *e, const char *p, size_t n, uint64_t h, const int32_t *ids, size_t k) {
    if (e->n >= CACHE_MAX_ENTRIES || e->keys_n + n > CACHE_MAX_ARENA || e->cids_n + k > CACHE_MAX_ARENA / 4)
        cache_reset(e);
    if ((e->n + 1) * 2 > e->cap) {  // grow the table
        size_t cap = e->cap * 2;
        CacheSlot *ns = calloc(cap, sizeof(CacheSlot));
        if (!ns) return;  // caching is optional
        for (size_t i = 0; i < e->cap; i++) {
            if (!e->slots[i].h) continue;
            size_t j = e->slots[i].h & (cap - 1);
            while (ns[j].h) j = (j + 1) & (cap - 1);
            ns[j] = e->slots[i];
        }
        free(e->slots);
        e->slots = ns;
        e->cap = cap;
    }
    if (e->keys_n + n > e->keys_cap) {
        size_t cap = e->keys_cap ? e->keys_cap * 2 : (1 << 16);
        while (cap < e->keys_n + n) cap *= 2;
        char *nk = realloc(e->keys, cap);
        if (!nk) return;
        e->keys = nk;
        e->keys_cap = cap;
    }
    if (e->cids_n + k > e->cids_cap) {
        size_t cap = e->cids_cap ? e->cids_cap * 2 : (1 << 14);
        while (cap < e->cids_n + k) cap *= 2;
        int32_t *ni = realloc(e->cids, cap * sizeof(int32_t));
        if (!ni) return;
        e->cids = ni;
        e->cids_cap = cap;
    }
    size_t mask = e->cap - 1, i = h & mask;
    while (e->slots[i].h) i = (i + 1) & mask;
    CacheSlot *s = &e->slots[i];
    s->h = h;
    s->key_off = (uint32_t)e->keys_n;
    s->key_len = (uint32_t)n;
    s->ids_off = (uint32_t)e->cids_n;
    s->ids_n = (uint32_t)k;
    memcpy(e->keys + e->keys_n, p, n);
    e->keys_n += n;
    memcpy(e->cids + e->cids_n, ids, k * sizeof(int32_t));
    e->cids_n += k;
    e->n++;
}

static int scratch_reserve(TokEncoder *e, size_t n) {
    if (n <= e->scratch_cap) return 0;
    size_t cap = e->scratch_cap ? e->scratch_cap : 256;
    while (cap < n) cap *= 2;
    int32_t *a = realloc(e->sym, cap * sizeof(int32_t));
    if (!a) return -1;
    e->sym = a;
    a = realloc(e->prv, cap * sizeof(int32_t));
    if (!a) return -1;
    e->prv = a;
    a = realloc(e->nxt, cap * sizeof(int32_t));
    if (!a) return -1;
    e->nxt = a;
    e->scratch_cap = cap;
    return 0;
}

// min-heap of (rank << 32 | pos)
static int heap_push(TokEncoder *e, size_t *hn, uint64_t v) {
    if (*hn == e->heap_cap) {
        size_t cap = e->heap_cap ? e->heap_cap * 2 : 256;
        uint64_t *h = realloc(e->heap, cap * sizeof(uint64_t));
        if (!h) return -1;
        e->heap = h;
        e->heap_cap = cap;
    }
    size_t i = (*hn)++;
    while (i > 0) {
        size_t p = (i - 1) / 2;
        if (e->heap[p] <= v) break;
        e->heap[i] = e->heap[p];
        i = p;
    }
    e->heap[i] = v;
    return 0;
}

static uint64_t heap_pop(TokEncoder *e, size_t *hn) {
    uint64_t top = e->heap[0], v = e->heap[--(*hn)];
    size_t i = 0, n = *hn;
    for (;;) {
        size_t c = 2 * i + 1;
        if (c >= n) break;
        if (c + 1 < n && e->heap[c + 1] < e->heap[c]) c++;
        if (e->heap[c] >= v) break;
        e->heap[i] = e->heap[c];
        i = c;
    }
    if (n) e->heap[i] = v;
    return top;
}

// BPE over m symbols in e->sym; returns the new count (symbols compacted in e->sym)
static size_t bpe_merge(TokEncoder *e, size_t m) {
    const Tokenizer *tok = e->tok;
    int32_t *sym = e->sym;
    if (m < 2 || tok->n_merges == 0) return m;
    if (m <= 64) {  // short pieces: rank of every adjacent pair, rescanned after each merge
        int32_t rank[64], mid[64];
        for (size_t i = 0; i + 1 < m; i++) {
            const TokPairSlot *s = pairmap_get(&tok->merge_map, sym[i], sym[i + 1]);
            rank[i] = s ? s->rank : INT32_MAX;
            mid[i] = s ? s->id : -1;
        }
        while (m > 1) {
            size_t bi = 0;
            for (size_t i = 1; i + 1 < m; i++)
                if (rank[i] < rank[bi]) bi = i;  // strict: leftmost of equal ranks
            if (rank[bi] == INT32_MAX) break;
            sym[bi] = mid[bi];
            // drop symbol bi+1 and pair bi+1 (pair bi is replaced below)
            memmove(sym + bi + 1, sym + bi + 2, (m - bi - 2) * sizeof(int32_t));
            if (bi + 2 < m) {
                memmove(rank + bi + 1, rank + bi + 2, (m - bi - 3) * sizeof(int32_t));
                memmove(mid + bi + 1, mid + bi + 2, (m - bi - 3) * sizeof(int32_t));
            }
            m--;
            for (size_t j = bi ? bi - 1 : 0; j <= bi && j + 1 < m; j++) {
                const TokPairSlot *s = pairmap_get(&tok->merge_map, sym[j], sym[j + 1]);
                rank[j] = s ? s->rank : INT32_MAX;
                mid[j] = s ? s->id : -1;
            }
        }
        return m;
    }
    // long pieces: linked list + heap of (rank, position), stale entries skipped
    int32_t *prv = e->prv, *nxt = e->nxt;
    size_t hn = 0;
    for (size_t i = 0; i < m; i++) {
        prv[i] = (int32_t)i - 1;
        nxt[i] = i + 1 < m ? (int32_t)i + 1 : -1;
    }
    for (size_t i = 0; i + 1 < m; i++) {
        const TokPairSlot *s = pairmap_get(&tok->merge_map, sym[i], sym[i + 1]);
        if (s && heap_push(e, &hn, ((uint64_t)(uint32_t)s->rank << 32) | i)) return m;  // OOM: stop merging
    }
    while (hn) {
        uint64_t top = heap_pop(e, &hn);
        int32_t rank = (int32_t)(top >> 32), pos = (int32_t)(top & 0xFFFFFFFFu);
        if (sym[pos] < 0) continue;  // dead
        int32_t r = nxt[pos];
        if (r < 0) continue;
        const TokPairSlot *s = pairmap_get(&tok->merge_map, sym[pos], sym[r]);
        if (!s || s->rank != rank) continue;
        sym[pos] = s->id;
        sym[r] = -1;
        nxt[pos] = nxt[r];
        if (nxt[r] >= 0) prv[nxt[r]] = pos;
        if (prv[pos] >= 0) {
            const TokPairSlot *t = pairmap_get(&tok->merge_map, sym[prv[pos]], sym[pos]);
            if (t && heap_push(e, &hn, ((uint64_t)(uint32_t)t->rank << 32) | (uint32_t)prv[pos])) break;
        }
        if (nxt[pos] >= 0) {
            const TokPairSlot *t = pairmap_get(&tok->merge_map, sym[pos], sym[nxt[pos]]);
            if (t && heap_push(e, &hn, ((uint64_t)(uint32_t)t->rank << 32) | (uint32_t)pos)) break;
        }
    }
    size_t w = 0;
    for (int32_t i = 0; i >= 0; i = nxt[i]) sym[w++] = sym[i];
    return w;
}

// Encode one pre-split piece and append to e->out.
static void encode_piece(void *ctx, const char *p, size_t n) {
    TokEncoder *e = ctx;
    const Tokenizer *tok = e->tok;
    if (e->oom || n == 0) return;
    uint64_t h = 0;
    if (n <= CACHE_MAX_PIECE) {
        h = tok_hash_bytes(p, n) | 1;
        const CacheSlot *s = cache_find(e, p, n, h);
        if (s) {
            if (ids_reserve(e->out, s->ids_n)) { e->oom = 1; return; }
            memcpy(e->out->ids + e->out->n, e->cids + s->ids_off, s->ids_n * sizeof(int32_t));
            e->out->n += s->ids_n;
            return;
        }
    }
    if (scratch_reserve(e, n)) { e->oom = 1; return; }
    size_t m = 0;
    int32_t whole = tok->ignore_merges ? tok_strmap_get(&tok->bytes_to_id, p, n) : -1;
    if (whole >= 0) {
        e->sym[m++] = whole;
    } else {
        for (size_t i = 0; i < n; i++) {
            int32_t id = tok->byte_id[(unsigned char)p[i]];
            if (id < 0) {  // byte missing from the vocab: unk (fused) or dropped, as HF
                if (tok->unk_id < 0) continue;
                if (tok->fuse_unk && m > 0 && e->sym[m - 1] == tok->unk_id) continue;
                id = tok->unk_id;
            }
            e->sym[m++] = id;
        }
        m = bpe_merge(e, m);
    }
    if (ids_reserve(e->out, m)) { e->oom = 1; return; }
    memcpy(e->out->ids + e->out->n, e->sym, m * sizeof(int32_t));
    e->out->n += m;
    if (h) cache_insert(e, p, n, h, e->sym, m);
}

static int encode_plain(TokEncoder *e, const char *text, size_t n) {
    if (n == 0) return 0;
    int64_t inv = tok_presplit(e->tok, &e->sp, text, n, encode_piece, e);
    if (inv < 0) return -1;
    e->invalid += inv;
    return e->oom ? -1 : 0;
}

// Unicode White_Space (Rust char::is_whitespace, which HF uses for lstrip/rstrip)
static int is_ws_cp(uint32_t c) {
    return (c >= 0x09 && c <= 0x0D) || c == 0x20 || c == 0x85 || c == 0xA0 || c == 0x1680 || (c >= 0x2000 && c <= 0x200A) ||
           c == 0x2028 || c == 0x2029 || c == 0x202F || c == 0x205F || c == 0x3000;
}
// length of the whitespace character starting at p (0 when none)
static size_t ws_at(const char *p, size_t n) {
    int l = tok_utf8_valid_len((const unsigned char *)p, n);
    uint32_t cp;
    if (l == 0) return 0;
    utf8_decode((const unsigned char *)p, (size_t)l, &cp);
    return is_ws_cp(cp) ? (size_t)l : 0;
}
// length of the whitespace character ending at text[end] (exclusive), not before start
static size_t ws_before(const char *text, size_t start, size_t end) {
    for (size_t l = 1; l <= 4 && l <= end - start; l++)
        if (ws_at(text + end - l, l) == l) return l;
    return 0;
}
static int is_word(unsigned char c) { return c == '_' || c >= 0x80 || (c >= '0' && c <= '9') || ((c | 32) >= 'a' && (c | 32) <= 'z'); }

int tok_encoder_encode(TokEncoder *e, const void *text_, size_t n, int flags, TokIds *out, MoeErr *err) {
    const char *text = text_;
    const Tokenizer *tok = e->tok;
    e->out = out;
    e->oom = 0;
    // without TOK_ENCODE_SPECIAL only non-special added tokens are split out (HF with
    // encode_special_tokens=True); with it, all of them (HF's default)
    int all = (flags & TOK_ENCODE_SPECIAL) != 0;
    uint8_t first[256] = {0};
    int any = 0;
    for (int k = 0; k < tok->n_added; k++)
        if (tok->added[k].len && (all || !tok->added[k].special)) {
            first[(unsigned char)tok->added[k].content[0]] = 1;
            any = 1;
        }
    if (!any) {
        if (encode_plain(e, text, n)) return moe_err_set(err, "tokenizer: out of memory encoding %zu bytes", n);
        return 0;
    }
    size_t seg = 0, pos = 0;
    while (pos < n) {
        if (!first[(unsigned char)text[pos]]) {
            pos++;
            continue;
        }
        int hit = -1;
        for (int k = 0; k < tok->n_added; k++) {  // sorted longest first: leftmost-longest
            const TokAdded *a = &tok->added[k];
            if (a->len == 0 || (a->special && !all) || a->len > n - pos || memcmp(text + pos, a->content, a->len) != 0)
                continue;
            if (a->single_word && ((pos > 0 && is_word((unsigned char)text[pos - 1])) ||
                                   (pos + a->len < n && is_word((unsigned char)text[pos + a->len]))))
                continue;
            hit = k;
            break;
        }
        if (hit < 0) {
            pos++;
            continue;
        }
        const TokAdded *a = &tok->added[hit];
        size_t seg_end = pos;
        if (a->lstrip)
            for (size_t l; seg_end > seg && (l = ws_before(text, seg, seg_end)) > 0;) seg_end -= l;
        if (encode_plain(e, text + seg, seg_end - seg) || ids_reserve(out, 1))
            return moe_err_set(err, "tokenizer: out of memory encoding %zu bytes", n);
        out->ids[out->n++] = a->id;
        pos += a->len;
        if (a->rstrip)
            for (size_t l; pos < n && (l = ws_at(text + pos, n - pos)) > 0;) pos += l;
        seg = pos;
    }
    if (encode_plain(e, text + seg, n - seg)) return moe_err_set(err, "tokenizer: out of memory encoding %zu bytes", n);
    return 0;
}

int tokenizer_encode(Tokenizer *tok, const void *text, size_t n, int flags, TokIds *out, MoeErr *err) {
    if (!tok->enc) {
        tok->enc = tok_encoder_new(tok, err);
        if (!tok->enc) return -1;
    }
    return tok_encoder_encode(tok->enc, text, n, flags, out, err);
}

int64_t tokenizer_invalid_utf8(const Tokenizer *tok) { return tok->enc ? tok->enc->invalid : 0; }
void tokenizer_reset_invalid_utf8(Tokenizer *tok) {
    if (tok->enc) tok->enc->invalid = 0;
}

// ---------------------------------------------------------------------------------------
// Decode and queries

int tokenizer_decode(const Tokenizer *tok, const int32_t *ids, size_t n, int skip_special, char **out, size_t *n_out,
                     MoeErr *err) {
    size_t total = 0;
    for (size_t i = 0; i < n; i++) {
        if (ids[i] < 0 || ids[i] >= tok->vocab_size || !tok->tok_bytes[ids[i]])
            return moe_err_set(err, "tokenizer: decode: id %d at position %zu is not in the vocabulary (size %d)",
                               (int)ids[i], i, (int)tok->vocab_size);
        if (skip_special && tok->is_special[ids[i]]) continue;
        total += tok->tok_len[ids[i]];
    }
    char *buf = malloc(total + 1);
    if (!buf) return moe_err_set(err, "tokenizer: out of memory decoding %zu ids", n);
    size_t o = 0;
    for (size_t i = 0; i < n; i++) {
        if (skip_special && tok->is_special[ids[i]]) continue;
        memcpy(buf + o, tok->tok_bytes[ids[i]], tok->tok_len[ids[i]]);
        o += tok->tok_len[ids[i]];
    }
    buf[o] = 0;
    *out = buf;
    *n_out = o;
    return 0;
}

const char *tokenizer_token_bytes(const Tokenizer *tok, int32_t id, size_t *len) {
    if (id < 0 || id >= tok->vocab_size || !tok->tok_bytes[id]) {
        if (len) *len = 0;
        return NULL;
    }
    if (len) *len = tok->tok_len[id];
    return tok->tok_bytes[id];
}

int tokenizer_vocab_size(const Tokenizer *tok) { return tok->vocab_size; }
int tokenizer_n_merges(const Tokenizer *tok) { return tok->n_merges; }
int tokenizer_bos_id(const Tokenizer *tok) { return tok->bos_id; }
int tokenizer_eos_id(const Tokenizer *tok) { return tok->eos_id; }
int tokenizer_pad_id(const Tokenizer *tok) { return tok->pad_id; }
const char *tokenizer_pretok_name(const Tokenizer *tok) { return tok->pretok_name; }

int tokenizer_set_special_ids(Tokenizer *tok, int bos, int eos, int pad) {
    if (bos >= tok->vocab_size || eos >= tok->vocab_size || pad >= tok->vocab_size) return -1;
    tok->bos_id = bos < 0 ? -1 : bos;
    tok->eos_id = eos < 0 ? -1 : eos;
    tok->pad_id = pad < 0 ? -1 : pad;
    return 0;
}

int tokenizer_is_special(const Tokenizer *tok, int32_t id) {
    return id >= 0 && id < tok->vocab_size && tok->is_special[id];
}

int32_t tokenizer_token_id(const Tokenizer *tok, const char *bytes, size_t len) {
    for (int k = 0; k < tok->n_added; k++)
        if (tok->added[k].len == len && memcmp(tok->added[k].content, bytes, len) == 0) return tok->added[k].id;
    return tok_strmap_get(&tok->bytes_to_id, bytes, len);
}

void tokenizer_free(Tokenizer *tok) {
    if (!tok) return;
    for (int32_t i = 0; i < tok->vocab_size; i++) {
        if (tok->tok_bytes) free(tok->tok_bytes[i]);
        if (tok->tok_text) free(tok->tok_text[i]);
    }
    free(tok->tok_bytes);
    free(tok->tok_text);
    free(tok->tok_len);
    free(tok->is_special);
    free(tok->is_added);
    free(tok->is_pure);
    free(tok->in_model);
    tok_strmap_free(&tok->bytes_to_id);
    free(tok->merges);
    free(tok->merge_map.slots);
    for (int i = 0; i < tok->n_steps; i++) {
        free(tok->steps[i].pattern);
        if (tok->steps[i].re) pcre2_code_free(tok->steps[i].re);
    }
    free(tok->steps);
    for (int k = 0; k < tok->n_added; k++) free(tok->added[k].content);
    free(tok->added);
    free(tok->post_processor_json);
    tok_encoder_free(tok->enc);
    free(tok);
}

// ---------------------------------------------------------------------------------------
// Derived tables

static int cmp_added(const void *x, const void *y) {
    const TokAdded *a = x, *b = y;
    if (a->len != b->len) return a->len > b->len ? -1 : 1;  // longest first
    return a->id < b->id ? -1 : a->id > b->id;
}

static int32_t find_added(const Tokenizer *tok, const char *const *names, int n) {
    for (int i = 0; i < n; i++)
        for (int k = 0; k < tok->n_added; k++)
            if (strlen(names[i]) == tok->added[k].len && memcmp(names[i], tok->added[k].content, tok->added[k].len) == 0)
                return tok->added[k].id;
    return -1;
}

int tok_finalize(Tokenizer *tok, const char *name, MoeErr *err) {
    // bytes -> id over the model's byte-level tokens (added tokens are matched separately)
    if (tok_strmap_init(&tok->bytes_to_id, (size_t)tok->vocab_size) != 0) goto oom;
    for (int32_t id = 0; id < tok->vocab_size; id++)
        if (tok->tok_bytes[id] && tok->is_pure[id] && !tok->is_added[id])
            if (tok_strmap_put(&tok->bytes_to_id, tok->tok_bytes[id], tok->tok_len[id], id) != 0) goto oom;
    for (int b = 0; b < 256; b++) {
        char c = (char)b;
        tok->byte_id[b] = tok_strmap_get(&tok->bytes_to_id, &c, 1);
    }
    if (pairmap_init(&tok->merge_map, (size_t)tok->n_merges) != 0) goto oom;
    for (int32_t r = 0; r < tok->n_merges; r++)
        pairmap_put(&tok->merge_map, tok->merges[r][0], tok->merges[r][1], r, tok->merges[r][2]);
    for (int i = 0; i < tok->n_steps; i++)
        if (!tok->steps[i].re && tok_step_compile(&tok->steps[i], name, err) != 0) return -1;
    if (tok->n_added > 1) qsort(tok->added, (size_t)tok->n_added, sizeof(TokAdded), cmp_added);
    for (int k = 0; k < tok->n_added; k++) {
        int32_t id = tok->added[k].id;
        tok->is_added[id] = 1;
        tok->is_special[id] = (uint8_t)tok->added[k].special;
    }
    static const char *const bos_names[] = {"<|begin_of_text|>", "<\xef\xbd\x9c" "begin\xe2\x96\x81of\xe2\x96\x81sentence\xef\xbd\x9c>",
                                            "<s>", "<|startoftext|>", "<bos>", "<|endoftext|>"};
    static const char *const eos_names[] = {"<|end_of_text|>", "<\xef\xbd\x9c" "end\xe2\x96\x81of\xe2\x96\x81sentence\xef\xbd\x9c>",
                                            "</s>", "<|endoftext|>", "<eos>"};
    static const char *const pad_names[] = {"<|pad|>", "<\xef\xbd\x9c\xe2\x96\x81pad\xe2\x96\x81\xef\xbd\x9c>", "<pad>",
                                            "<|padding|>"};
    tok->bos_id = find_added(tok, bos_names, 6);
    tok->eos_id = find_added(tok, eos_names, 5);
    tok->pad_id = find_added(tok, pad_names, 4);
    return 0;
oom:
    return moe_err_set(err, "%s: out of memory building the tokenizer tables", name);
}

int tok_alloc_vocab(Tokenizer *tok, int32_t vocab_size) {
    size_t v = (size_t)(vocab_size > 0 ? vocab_size : 1);
    tok->vocab_size = vocab_size;
    tok->tok_bytes = calloc(v, sizeof(char *));
    tok->tok_text = calloc(v, sizeof(char *));
    tok->tok_len = calloc(v, sizeof(uint32_t));
    tok->is_special = calloc(v, 1);
    tok->is_added = calloc(v, 1);
    tok->is_pure = calloc(v, 1);
    tok->in_model = calloc(v, 1);
    if (!tok->tok_bytes || !tok->tok_text || !tok->tok_len || !tok->is_special || !tok->is_added || !tok->is_pure ||
        !tok->in_model)
        return -1;
    return 0;
}

int tok_set_token_text(Tokenizer *tok, int32_t id, const char *text, size_t n) {
    char *t = malloc(n + 1), *b = malloc(n + 1);
    if (!t || !b) {
        free(t);
        free(b);
        return -1;
    }
    memcpy(t, text, n);
    t[n] = 0;
    size_t bn = tok_text_to_bytes(text, n, b);
    b[bn] = 0;
    free(tok->tok_text[id]);
    free(tok->tok_bytes[id]);
    tok->tok_text[id] = t;
    tok->tok_bytes[id] = b;
    tok->tok_len[id] = (uint32_t)bn;
    tok->is_pure[id] = (uint8_t)tok_text_is_bytelevel(text, n);
    return 0;
}
