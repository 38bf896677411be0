// Corpus extraction: built-in sources (bible, dictd dictionaries, C headers) and user
// files (text, JSONL, CSV/TSV) into documents with domains. See corpus.h.
#define _XOPEN_SOURCE 700
#include "corpus.h"

#include <cjson/cJSON.h>
#include <ctype.h>
#include <dirent.h>
#include <errno.h>
#include <ftw.h>
#include <strings.h>
#include <sys/stat.h>
#include <zlib.h>

// ---------------------------------------------------------------------------------------
// the corpus container

int corpus_domain(Corpus *c, const char *name, MoeErr *err) {
    size_t len = strlen(name);
    if (len == 0 || len >= SHARD_DOMAIN_NAME_LEN)
        return moe_err_set(err, "domain name '%s' must be 1..%d characters", name, SHARD_DOMAIN_NAME_LEN - 1);
    for (size_t i = 0; i < len; i++)
        if (!(isalnum((unsigned char)name[i]) || name[i] == '_' || name[i] == '-' || name[i] == '.'))
            return moe_err_set(err, "domain name '%s': only letters, digits, '_', '-' and '.' are allowed", name);
    for (int d = 0; d < c->n_domains; d++)
        if (strcmp(c->domains[d], name) == 0) return d;
    void *p = realloc(c->domains, (size_t)(c->n_domains + 1) * SHARD_DOMAIN_NAME_LEN);
    if (!p) return moe_err_set(err, "out of memory");
    c->domains = p;
    memset(c->domains[c->n_domains], 0, SHARD_DOMAIN_NAME_LEN);
    memcpy(c->domains[c->n_domains], name, len);
    return c->n_domains++;
}

int corpus_add(Corpus *c, int domain, const char *text, size_t len, MoeErr *err) {
    if (c->n_docs == c->cap_docs) {
        int64_t nc = c->cap_docs ? 2 * c->cap_docs : 1024;
        CorpusDoc *p = (CorpusDoc *)realloc(c->docs, (size_t)nc * sizeof(CorpusDoc));
        if (!p) return moe_err_set(err, "out of memory (%lld documents)", (long long)nc);
        c->docs = p;
        c->cap_docs = nc;
    }
    char *t = (char *)malloc(len + 1);
    if (!t) return moe_err_set(err, "out of memory (document of %zu bytes)", len);
    memcpy(t, text, len);
    t[len] = '\0';
    c->docs[c->n_docs].text = t;
    c->docs[c->n_docs].len = len;
    c->docs[c->n_docs].domain = domain;
    c->n_docs++;
    return 0;
}

void corpus_free(Corpus *c) {
    for (int64_t i = 0; i < c->n_docs; i++) free(c->docs[i].text);
    free(c->docs);
    free(c->domains);
    memset(c, 0, sizeof(*c));
}

int64_t corpus_bytes(const Corpus *c, int domain) {
    int64_t s = 0;
    for (int64_t i = 0; i < c->n_docs; i++)
        if (domain < 0 || c->docs[i].domain == domain) s += (int64_t)c->docs[i].len;
    return s;
}

// length of the valid UTF-8 sequence at s (1..4), 0 when invalid
static int utf8_seq_len(const unsigned char *s, size_t n) {
    unsigned char c = s[0];
    if (c < 0x80) return 1;
    int len;
    uint32_t cp;
    if (c >= 0xC2 && c <= 0xDF) {
        len = 2;
        cp = c & 0x1F;
    } else if (c >= 0xE0 && c <= 0xEF) {
        len = 3;
        cp = c & 0x0F;
    } else if (c >= 0xF0 && c <= 0xF4) {
        len = 4;
        cp = c & 0x07;
    } else {
        return 0;
    }
    if ((size_t)len > n) return 0;
    for (int i = 1; i < len; i++) {
        if ((s[i] & 0xC0) != 0x80) return 0;
        cp = (cp << 6) | (s[i] & 0x3F);
    }
    if ((len == 3 && cp < 0x800) || (len == 4 && (cp < 0x10000 || cp > 0x10FFFF)) || (cp >= 0xD800 && cp <= 0xDFFF))
        return 0;
    return len;
}

int64_t utf8_invalid_count(const char *s, size_t n) {
    const unsigned char *p = (const unsigned char *)s;
    int64_t bad = 0;
    size_t i = 0;
    while (i < n) {
        if (p[i] < 0x80) {
            i++;
            continue;
        }
        int l = utf8_seq_len(p + i, n - i);
        if (l == 0) {
            bad++;
            i++;
        } else {
            i += (size_t)l;
        }
    }
    return bad;
}

// ---------------------------------------------------------------------------------------
// growable byte buffer

typedef struct {
    char *p;
    size_t n, cap;
    int oom;
} Buf;

static void buf_put(Buf *b, const char *s, size_t n) {
    if (b->oom || n == 0) return;
    if (n > ((size_t)1 << 40)) {
        b->oom = 1;
        return;
    }
    if (b->n + n + 1 > b->cap) {
        size_t nc = b->cap ? b->cap : 256;
        while (nc < b->n + n + 1) nc *= 2;
        char *p = (char *)realloc(b->p, nc);
        if (!p) {
            b->oom = 1;
            return;
        }
        b->p = p;
        b->cap = nc;
    }
    memcpy(b->p + b->n, s, n);
    b->n += n;
    b->p[b->n] = '\0';
}
static void buf_putc(Buf *b, char c) { buf_put(b, &c, 1); }

// ---------------------------------------------------------------------------------------
// bible

int corpus_parse_bible(Corpus *c, int domain, const char *text, size_t n, const char *name, MoeErr *err) {
    // Chapter titles start at column 0 ("Genesis 1"); verses are indented ("  1 In the ...").
    Buf doc = {0};
    int64_t line_no = 0, n_chapters = 0;
    size_t i = 0;
    int rc = 0;
    while (i < n && rc == 0) {
        size_t j = i;
        while (j < n && text[j] != '\n') j++;
        line_no++;
        const char *line = text + i;
        size_t len = j - i;
        while (len > 0 && (line[len - 1] == '\r' || line[len - 1] == ' ')) len--;
        if (len > 0 && line[0] != ' ' && line[0] != '\t') {
            if (doc.n > 0) rc = corpus_add(c, domain, doc.p, doc.n, err);
            doc.n = 0;
            buf_put(&doc, line, len);
            buf_put(&doc, "\n\n", 2);
            n_chapters++;
        } else if (len > 0) {
            size_t k = 0;
            while (k < len && (line[k] == ' ' || line[k] == '\t')) k++;
            if (doc.n == 0) {
                rc = moe_err_set(err, "%s line %lld: verse before any chapter title", name, (long long)line_no);
                break;
            }
            buf_put(&doc, line + k, len - k);
            buf_putc(&doc, '\n');
        }
        i = j + 1;
    }
    if (rc == 0 && doc.n > 0) rc = corpus_add(c, domain, doc.p, doc.n, err);
    if (rc == 0 && doc.oom) rc = moe_err_set(err, "out of memory parsing %s", name);
    free(doc.p);
    if (rc == 0 && n_chapters == 0) rc = moe_err_set(err, "%s: no chapters found in %zu bytes of output", name, n);
    return rc;
}

int corpus_read_bible(Corpus *c, int domain, const char *program, MoeErr *err) {
    struct stat st;
    if (stat(program, &st) != 0)
        return moe_err_set(err, "'%s' not found: install the Debian package bible-kjv", program);
    char cmd[1200];
    snprintf(cmd, sizeof(cmd), "'%s' -l10000 gen1:1-rev22:21 2>/dev/null", program);
    FILE *fp = popen(cmd, "r");
    if (!fp) return moe_err_set(err, "cannot run '%s': %s", program, strerror(errno));
    Buf out = {0};
    char chunk[65536];
    size_t got;
    while ((got = fread(chunk, 1, sizeof(chunk), fp)) > 0) buf_put(&out, chunk, got);
    int status = pclose(fp);
    int rc = 0;
    if (out.oom) rc = moe_err_set(err, "out of memory reading the output of '%s'", program);
    else if (status != 0) rc = moe_err_set(err, "'%s' failed (status %d)", program, status);
    else rc = corpus_parse_bible(c, domain, out.p ? out.p : "", out.n, program, err);
    free(out.p);
    return rc;
}

// ---------------------------------------------------------------------------------------
// dictd dictionaries

static const char *const GCIDE_CODES[][2] = {
    {"[ae]", "æ"},    {"[AE]", "Æ"},    {"[oe]", "œ"},    {"[OE]", "Œ"},    {"[eth]", "ð"},   {"[ETH]", "Ð"},
    {"[thorn]", "þ"}, {"[THORN]", "Þ"}, {"[aum]", "ä"},   {"[eum]", "ë"},   {"[ium]", "ï"},   {"[oum]", "ö"},
    {"[uum]", "ü"},   {"[yum]", "ÿ"},   {"[Aum]", "Ä"},   {"[Eum]", "Ë"},   {"[Oum]", "Ö"},   {"[Uum]", "Ü"},
    {"['a]", "á"},    {"['e]", "é"},    {"['i]", "í"},    {"['o]", "ó"},    {"['u]", "ú"},    {"['E]", "É"},
    {"[`a]", "à"},    {"[`e]", "è"},    {"[`i]", "ì"},    {"[`o]", "ò"},    {"[`u]", "ù"},    {"[^a]", "â"},
    {"[^e]", "ê"},    {"[^i]", "î"},    {"[^o]", "ô"},    {"[^u]", "û"},    {"[~n]", "ñ"},    {"[~a]", "ã"},
    {"[~o]", "õ"},    {"[~e]", "ẽ"},    {"[cced]", "ç"},  {"[Cced]", "Ç"},  {"[=a]", "ā"},    {"[=e]", "ē"},
    {"[=i]", "ī"},    {"[=o]", "ō"},    {"[=u]", "ū"},    {"[=y]", "ȳ"},    {"[a^]", "ă"},    {"[e^]", "ĕ"},
    {"[i^]", "ĭ"},    {"[o^]", "ŏ"},    {"[u^]", "ŭ"},    {"[.a]", "ȧ"},    {"[.e]", "ė"},    {"[sect]", "§"},
    {"[deg]", "°"},   {"[frac12]", "½"}, {"[frac14]", "¼"}, {"[frac34]", "¾"}, {"[frac13]", "⅓"}, {"[frac23]", "⅔"},
    {"[root]", "√"},  {"[times]", "×"}, {"[divide]", "÷"}, {"[pound]", "£"}, {"[cent]", "¢"},  {"[dagger]", "†"},
    {"[para]", "¶"},  {"[mdash]", "—"}, {"[ndash]", "–"}, {"[prime]", "′"}, {"[dprime]", "″"}, {"[alpha]", "α"},
    {"[imac]", "ī"},  {"[\"a]", "ä"},   {"[\"e]", "ë"},   {"[\"i]", "ï"},   {"[\"o]", "ö"},   {"[\"u]", "ü"},
    {"[-a]", "ā"},    {"[-e]", "ē"},    {"[-i]", "ī"},    {"[-o]", "ō"},    {"[-u]", "ū"},    {"[=ae]", "ǣ"},
    {"[beta]", "β"},  {"[gamma]", "γ"}, {"[delta]", "δ"}, {"[pi]", "π"},    {"[mu]", "μ"},    {"[omega]", "ω"},
};

// a GCIDE source tag line such as "[1913 Webster]", "[WordNet 1.5 +PJC]", "[AS]"
static int is_source_tag(const char *s, size_t n) {
    if (n < 3 || s[0] != '[' || s[n - 1] != ']' || n > 60) return 0;
    if (memchr(s + 1, '[', n - 2) || memchr(s + 1, ']', n - 2)) return 0;
    static const char *const keys[] = {"Webster", "WordNet", "PJC", "Century", "RDH", "Chambers", "Dict."};
    for (size_t k = 0; k < sizeof(keys) / sizeof(keys[0]); k++) {
        size_t kl = strlen(keys[k]);
        for (size_t i = 0; i + kl <= n; i++)
            if (memcmp(s + i, keys[k], kl) == 0) return 1;
    }
    // initials of a contributor: [AS], [MW], [RN]
    if (n >= 4 && n <= 5) {
        for (size_t i = 1; i + 1 < n; i++)
            if (!isupper((unsigned char)s[i])) return 0;
        return 1;
    }
    return 0;
}

static int is_list_marker(const char *c, size_t n) {
    size_t i = 0;
    while (i < n && isdigit((unsigned char)c[i])) i++;
    if (i > 0 && i + 1 < n && c[i] == '.' && c[i + 1] == ' ') return 1;
    if (n >= 4 && c[0] == '(' && isalnum((unsigned char)c[1]) && c[2] == ')' && c[3] == ' ') return 1;
    static const char *const marks[] = {"Syn:", "Usage:", "Note:", "--", "* ", "- ", "\xe2\x80\xa2"};
    for (size_t k = 0; k < sizeof(marks) / sizeof(marks[0]); k++) {
        size_t ml = strlen(marks[k]);
        if (n >= ml && memcmp(c, marks[k], ml) == 0) return 1;
    }
    return 0;
}

// GCIDE headword line: drop "\pro*nun"ci*a`tion\" spans and the phonetic "( ... )" group
// that follows one
static void gcide_headword(Buf *out, const char *s, size_t n) {
    size_t i = 0;
    while (i < n) {
        if (s[i] == '\\') {
            const char *e = memchr(s + i + 1, '\\', n - i - 1);
            if (e) {
                while (out->n > 0 && out->p[out->n - 1] == ' ') out->n--;
                i = (size_t)(e - s) + 1;
                // a phonetic group right after
                size_t k = i;
                while (k < n && s[k] == ' ') k++;
                if (k < n && s[k] == '(') {
                    const char *ce = memchr(s + k, ')', n - k);
                    if (ce) {
                        size_t gl = (size_t)(ce - (s + k));
                        if (memchr(s + k, '[', gl) || memchr(s + k, '*', gl) || memchr(s + k, '"', gl) ||
                            memchr(s + k, '`', gl))
                            i = (size_t)(ce - s) + 1;
                    }
                }
                continue;
            }
        }
        buf_putc(out, s[i]);
        i++;
    }
}

// a source tag at the start of a line ("[1913 Webster]" or "[1913 Webster] junk")
static int starts_with_source_tag(const char *s, size_t n) {
    if (n < 3 || s[0] != '[') return 0;
    const char *e = memchr(s, ']', n);
    return e && is_source_tag(s, (size_t)(e - s) + 1);
}

// hanging indent of a list line: column where the text after the marker starts (0: none)
static int hang_width(const char *c, size_t n) {
    if (!is_list_marker(c, n)) return 0;
    size_t i = 0;
    while (i < n && c[i] != ' ') i++;
    while (i < n && c[i] == ' ') i++;
    return i < n ? (int)i : 0;
}

// net count of open brackets/parentheses on a line (a wrapped headword line ends inside one)
static int open_brackets(const char *c, size_t n) {
    int o = 0;
    for (size_t i = 0; i < n; i++) o += (c[i] == '[' || c[i] == '(') - (c[i] == ']' || c[i] == ')');
    return o;
}

typedef struct {
    size_t start, len;  // content (after the indentation) inside the pass-1 buffer
    int indent;
} DLine;

size_t dict_normalize(char *text, size_t n, int style) {
    // pass 1: per line (headword, source tag lines, character codes) into `a`
    Buf a = {0};
    size_t i = 0;
    while (i < n) {
        size_t j = i;
        while (j < n && text[j] != '\n') j++;
        const char *line = text + i;
        size_t len = j - i;
        while (len > 0 && (line[len - 1] == ' ' || line[len - 1] == '\r' || line[len - 1] == '\t')) len--;
        size_t k = 0;
        while (k < len && (line[k] == ' ' || line[k] == '\t')) k++;
        int drop = 0;
        if (len - k == 2 && line[k] == '/' && line[k + 1] == '/') drop = 1;  // jargon: no pronunciation
        if (style == DICT_GCIDE && starts_with_source_tag(line + k, len - k)) drop = 1;
        if (!drop) {
            Buf l = {0};
            if (style == DICT_GCIDE && k == 0)  // headword lines start at column 0, the body is indented
                gcide_headword(&l, line, len);
            else
                buf_put(&l, line, len);
            for (size_t p = 0; p < l.n; p++) {
                if (l.p[p] == '[' && style == DICT_GCIDE) {
                    int done = 0;
                    for (size_t t = 0; t < sizeof(GCIDE_CODES) / sizeof(GCIDE_CODES[0]) && !done; t++) {
                        size_t cl = strlen(GCIDE_CODES[t][0]);
                        if (p + cl <= l.n && memcmp(l.p + p, GCIDE_CODES[t][0], cl) == 0) {
                            buf_put(&a, GCIDE_CODES[t][1], strlen(GCIDE_CODES[t][1]));
                            p += cl - 1;
                            done = 1;
                        }
                    }
                    if (done) continue;
                }
                buf_putc(&a, l.p[p]);
            }
            free(l.p);
            buf_putc(&a, '\n');
        }
        i = j + 1;
    }
    // pass 2: lines with their indentation
    DLine *lines = NULL;
    size_t nl = 0, cap = 0;
    for (i = 0; i < a.n && !a.oom;) {
        size_t j = i;
        while (j < a.n && a.p[j] != '\n') j++;
        int indent = 0;
        size_t k = i;
        while (k < j && (a.p[k] == ' ' || a.p[k] == '\t')) {
            indent += a.p[k] == '\t' ? 8 - indent % 8 : 1;
            k++;
        }
        if (nl == cap) {
            cap = cap ? 2 * cap : 64;
            DLine *p = (DLine *)realloc(lines, cap * sizeof(DLine));
            if (!p) {
                a.oom = 1;
                break;
            }
            lines = p;
        }
        lines[nl].start = k;
        lines[nl].len = j - k;
        lines[nl].indent = indent;
        nl++;
        i = j + 1;
    }
    // pass 3: reflow paragraphs into `b`: the paragraph's indentation is removed, wrapped
    // lines are joined
    Buf b = {0};
    int base = 0, hang = -1, prev_indent = -1, prev_open = 0;
    size_t prev_len = 0;
    int in_para = 0;
    for (size_t li = 0; li < nl; li++) {
        const char *c = a.p + lines[li].start;
        size_t cl = lines[li].len;
        int indent = lines[li].indent;
        if (cl == 0) {
            in_para = 0;
            continue;
        }
        if (!in_para) {
            base = 1 << 30;
            // a paragraph that starts with a headword at column 0: the indentation of its body
            for (size_t q = (indent == 0 ? li + 1 : li); q < nl && lines[q].len > 0; q++)
                if (lines[q].indent < base) base = lines[q].indent;
            if (base == 1 << 30) base = indent;
            if (b.n > 0) buf_put(&b, "\n\n", 2);
            for (int s2 = base; s2 < indent; s2++) buf_putc(&b, ' ');
            in_para = 1;
            // a hanging indent ("Diametral curve (Geom.), any line or\n      surface which ..."):
            // the deeper lines that follow a long first line continue it
            if (indent > 0 && li + 1 < nl && lines[li + 1].len > 0 && lines[li + 1].indent > indent &&
                cl >= 48 &&
                !is_list_marker(a.p + lines[li + 1].start, lines[li + 1].len)) {
                buf_put(&b, c, cl);
                buf_putc(&b, ' ');
                li++;
                c = a.p + lines[li].start;
                cl = lines[li].len;
                indent = lines[li].indent;
                hang = indent;
            }
        } else if (((indent == prev_indent || indent == hang) && prev_len >= 48 && !is_list_marker(c, cl)) ||
                   (prev_open > 0 && !is_list_marker(c, cl))) {
            buf_putc(&b, ' ');
            if (indent != prev_indent && indent != hang) hang = indent;  // continuation of a wrapped headword
        } else {
            buf_putc(&b, '\n');
            for (int s2 = base; s2 < indent; s2++) buf_putc(&b, ' ');
        }
        buf_put(&b, c, cl);
        if (is_list_marker(c, cl)) {
            int h = hang_width(c, cl);
            hang = h ? indent + h : -1;
        } else if (indent != hang) {
            hang = -1;
        }
        prev_open = prev_open > 0 && indent != prev_indent ? prev_open + open_brackets(c, cl) : open_brackets(c, cl);
        if (prev_open < 0) prev_open = 0;
        prev_indent = indent;
        prev_len = cl;  // wrapped prose fills its lines; verse and code lines are shorter
    }
    if (b.n > 0) buf_putc(&b, '\n');
    free(lines);
    // pass 4: cross references {word} -> word (also across joined lines; never nested)
    Buf r = {0};
    for (size_t p = 0; p < b.n; p++) {
        if (b.p[p] == '{') {
            size_t open = (p + 1 < b.n && b.p[p + 1] == '{') ? 2 : 1;  // GCIDE also has {{word}}
            size_t q = p + open;
            while (q < b.n && q - p < 400 && b.p[q] != '}' && b.p[q] != '{' && b.p[q] != ';') q++;
            if (q < b.n && b.p[q] == '}' && q > p + open) {
                size_t s0 = p + open, s1 = q;
                while (s0 < s1 && b.p[s0] == ' ') s0++;
                while (s1 > s0 && b.p[s1 - 1] == ' ') s1--;
                buf_put(&r, b.p + s0, s1 - s0);
                p = q;
                if (open == 2 && p + 1 < b.n && b.p[p + 1] == '}') p++;
                continue;
            }
        }
        buf_putc(&r, b.p[p]);
    }
    size_t out_n = n;  // out of memory or (impossible) growth: keep the entry as it was
    if (!a.oom && !b.oom && !r.oom && r.n <= n) {
        if (r.n) memcpy(text, r.p, r.n);
        out_n = r.n;
    }
    text[out_n] = '\0';
    free(a.p);
    free(b.p);
    free(r.p);
    return out_n;
}

typedef struct {
    uint64_t off, len;
} DictEntry;

static int cmp_entry(const void *x, const void *y) {
    const DictEntry *a = (const DictEntry *)x, *b = (const DictEntry *)y;
    if (a->off != b->off) return a->off < b->off ? -1 : 1;
    return a->len < b->len ? -1 : (a->len > b->len);
}

static int b64_value(char ch) {
    if (ch >= 'A' && ch <= 'Z') return ch - 'A';
    if (ch >= 'a' && ch <= 'z') return ch - 'a' + 26;
    if (ch >= '0' && ch <= '9') return ch - '0' + 52;
    if (ch == '+') return 62;
    if (ch == '/') return 63;
    return -1;
}

static int parse_b64(const char *s, size_t n, uint64_t *out) {
    if (n == 0 || n > 10) return -1;
    uint64_t v = 0;
    for (size_t i = 0; i < n; i++) {
        int d = b64_value(s[i]);
        if (d < 0) return -1;
        v = v * 64 + (uint64_t)d;
    }
    *out = v;
    return 0;
}

static int read_gz_all(const char *path, Buf *out, MoeErr *err) {
    gzFile gz = gzopen(path, "rb");
    if (!gz) return moe_err_set(err, "cannot open '%s': %s", path, strerror(errno));
    char chunk[1 << 16];
    int got;
    while ((got = gzread(gz, chunk, sizeof(chunk))) > 0) buf_put(out, chunk, (size_t)got);
    int zerr = 0;
    const char *msg = gzerror(gz, &zerr);
    int rc = 0;
    if (got < 0 || (zerr != Z_OK && zerr != Z_STREAM_END))
        rc = moe_err_set(err, "'%s': decompression failed after %zu bytes: %s", path, out->n, msg ? msg : "?");
    gzclose(gz);
    if (rc == 0 && out->oom) rc = moe_err_set(err, "out of memory reading '%s'", path);
    return rc;
}

int corpus_read_dictd(Corpus *c, int domain, const char *dict, const char *index, int style, int64_t max_entries,
                      MoeErr *err) {
    char *idx = NULL;
    size_t idx_n = 0;
    if (read_file_all(index, &idx, &idx_n, err)) return -1;
    DictEntry *ents = NULL;
    size_t n_ents = 0, cap = 0;
    int rc = 0;
    int64_t line_no = 0;
    for (size_t i = 0; i < idx_n && rc == 0;) {
        size_t j = i;
        while (j < idx_n && idx[j] != '\n') j++;
        line_no++;
        const char *line = idx + i;
        size_t len = j - i;
        i = j + 1;
        if (len == 0) continue;
        const char *t1 = memchr(line, '\t', len);
        const char *t2 = t1 ? memchr(t1 + 1, '\t', (size_t)(line + len - t1 - 1)) : NULL;
        if (!t1 || !t2) {
            rc = moe_err_set(err, "'%s' line %lld: expected 'headword TAB offset TAB length'", index, (long long)line_no);
            break;
        }
        size_t hw = (size_t)(t1 - line);
        if ((hw >= 3 && memcmp(line, "00-", 3) == 0) || (hw >= 10 && memcmp(line, "00database", 10) == 0))
            continue;  // database information, not an entry
        const char *end = line + len;
        const char *t3 = memchr(t2 + 1, '\t', (size_t)(end - t2 - 1));  // optional 4th column
        if (t3) end = t3;
        DictEntry e;
        if (parse_b64(t1 + 1, (size_t)(t2 - t1 - 1), &e.off) || parse_b64(t2 + 1, (size_t)(end - t2 - 1), &e.len)) {
            rc = moe_err_set(err, "'%s' line %lld: bad base64 offset or length", index, (long long)line_no);
            break;
        }
        if (n_ents == cap) {
            cap = cap ? 2 * cap : 4096;
            DictEntry *p = (DictEntry *)realloc(ents, cap * sizeof(DictEntry));
            if (!p) {
                rc = moe_err_set(err, "out of memory reading '%s'", index);
                break;
            }
            ents = p;
        }
        ents[n_ents++] = e;
    }
    free(idx);
    Buf data = {0};
    if (rc == 0) rc = read_gz_all(dict, &data, err);
    if (rc == 0) {
        qsort(ents, n_ents, sizeof(DictEntry), cmp_entry);
        int64_t added = 0;
        char *tmp = NULL;
        size_t tmp_cap = 0;
        for (size_t k = 0; k < n_ents && rc == 0; k++) {
            if (k > 0 && ents[k].off == ents[k - 1].off && ents[k].len == ents[k - 1].len) continue;  // same entry
            if (ents[k].off > data.n || ents[k].len > data.n - ents[k].off) {
                rc = moe_err_set(err, "'%s': entry at offset %llu length %llu lies beyond the %zu bytes of '%s'", index,
                                 (unsigned long long)ents[k].off, (unsigned long long)ents[k].len, data.n, dict);
                break;
            }
            if (max_entries > 0 && added >= max_entries) break;
            size_t len = (size_t)ents[k].len;
            if (len == 0) continue;
            if (len + 1 > tmp_cap) {
                tmp_cap = 2 * (len + 1);
                char *p = (char *)realloc(tmp, tmp_cap);
                if (!p) {
                    rc = moe_err_set(err, "out of memory");
                    break;
                }
                tmp = p;
            }
            memcpy(tmp, data.p + ents[k].off, len);
            tmp[len] = '\0';
            size_t nl = dict_normalize(tmp, len, style);
            if (nl == 0) continue;
            rc = corpus_add(c, domain, tmp, nl, err);
            added++;
        }
        free(tmp);
        if (rc == 0 && added == 0) rc = moe_err_set(err, "'%s': no entries found", index);
    }
    free(ents);
    free(data.p);
    return rc;
}

// ---------------------------------------------------------------------------------------
// C headers

static char **g_walk_paths;
static size_t g_walk_n, g_walk_cap;
static int g_walk_oom;

static int walk_cb(const char *path, const struct stat *st, int type, struct FTW *ftw) {
    (void)ftw;
    if (type != FTW_F || !S_ISREG(st->st_mode)) return 0;
    size_t n = strlen(path);
    if (n < 2 || strcmp(path + n - 2, ".h") != 0) return 0;
    if (g_walk_n == g_walk_cap) {
        size_t nc = g_walk_cap ? 2 * g_walk_cap : 1024;
        char **p = (char **)realloc(g_walk_paths, nc * sizeof(char *));
        if (!p) {
            g_walk_oom = 1;
            return 1;
        }
        g_walk_paths = p;
        g_walk_cap = nc;
    }
    g_walk_paths[g_walk_n] = strdup(path);
    if (!g_walk_paths[g_walk_n]) {
        g_walk_oom = 1;
        return 1;
    }
    g_walk_n++;
    return 0;
}

static int cmp_str(const void *a, const void *b) { return strcmp(*(char *const *)a, *(char *const *)b); }

int corpus_read_code(Corpus *c, int domain, const char *dir, size_t max_file_bytes, MoeErr *err) {
    struct stat st;
    if (stat(dir, &st) != 0 || !S_ISDIR(st.st_mode)) return moe_err_set(err, "'%s' is not a directory", dir);
    g_walk_paths = NULL;
    g_walk_n = g_walk_cap = 0;
    g_walk_oom = 0;
    int wr = nftw(dir, walk_cb, 32, FTW_PHYS);
    int rc = 0;
    if (g_walk_oom) rc = moe_err_set(err, "out of memory listing '%s'", dir);
    else if (wr != 0) rc = moe_err_set(err, "cannot walk '%s': %s", dir, strerror(errno));
    if (rc == 0) qsort(g_walk_paths, g_walk_n, sizeof(char *), cmp_str);
    int64_t added = 0;
    for (size_t i = 0; i < g_walk_n && rc == 0; i++) {
        char *data = NULL;
        size_t n = 0;
        MoeErr e2;
        if (read_file_all(g_walk_paths[i], &data, &n, &e2) != 0) continue;  // unreadable: skip
        if (n > 0 && n <= max_file_bytes && memchr(data, 0, n) == NULL) {
            rc = corpus_add(c, domain, data, n, err);
            added++;
        }
        free(data);
    }
    for (size_t i = 0; i < g_walk_n; i++) free(g_walk_paths[i]);
    free(g_walk_paths);
    g_walk_paths = NULL;
    if (rc == 0 && added == 0) rc = moe_err_set(err, "no C headers (*.h) found under '%s'", dir);
    return rc;
}

// ---------------------------------------------------------------------------------------
// user files

void read_options_default(ReadOptions *o) {
    memset(o, 0, sizeof(*o));
    o->text_unit = TEXT_UNIT_FILE;
    o->csv_header = 1;
}

// read a whole text file: fails when missing, empty or holding NUL bytes
static int read_text_file(const char *path, char **data, size_t *n, MoeErr *err) {
    struct stat st;
    if (stat(path, &st) != 0) return moe_err_set(err, "cannot open '%s': %s", path, strerror(errno));
    if (!S_ISREG(st.st_mode)) return moe_err_set(err, "'%s' is not a regular file", path);
    if (read_file_all(path, data, n, err)) return -1;
    if (*n == 0) {
        free(*data);
        *data = NULL;
        return moe_err_set(err, "'%s' is an empty file", path);
    }
    const char *z = memchr(*data, 0, *n);
    if (z) {
        size_t off = (size_t)(z - *data);
        int64_t line = 1;
        for (size_t i = 0; i < off; i++) line += (*data)[i] == '\n';
        free(*data);
        *data = NULL;
        return moe_err_set(err, "'%s' is not a text file: NUL byte at byte %zu (line %lld)", path, off,
                           (long long)line);
    }
    return 0;
}

static int is_blank(const char *s, size_t n) {
    for (size_t i = 0; i < n; i++)
        if (!isspace((unsigned char)s[i])) return 0;
    return 1;
}

// add a document unless it is only whitespace
static int add_doc(Corpus *c, int domain, const char *s, size_t n, ReadOptions *o, MoeErr *err) {
    if (is_blank(s, n)) {
        o->n_empty++;
        return 0;
    }
    o->n_invalid_utf8 += utf8_invalid_count(s, n);
    return corpus_add(c, domain, s, n, err);
}

static int read_one_text(Corpus *c, int domain, const char *path, ReadOptions *o, MoeErr *err) {
    char *data = NULL;
    size_t n = 0;
    if (read_text_file(path, &data, &n, err)) return -1;
    int rc = 0;
    if (o->text_unit == TEXT_UNIT_FILE) {
        rc = add_doc(c, domain, data, n, o, err);
    } else {
        size_t start = 0, i = 0;
        while (i <= n && rc == 0) {
            int cut = 0;
            size_t next = i + 1;
            if (i == n) {
                cut = 1;
            } else if (data[i] == '\n') {
                if (o->text_unit == TEXT_UNIT_LINE) {
                    cut = 1;
                } else {  // a blank line (possibly with spaces / CR) ends a paragraph
                    size_t k = i + 1;
                    while (k < n && (data[k] == ' ' || data[k] == '\t' || data[k] == '\r')) k++;
                    if (k < n && data[k] == '\n') {
                        cut = 1;
                        next = k + 1;
                    }
                }
            }
            if (cut) {
                size_t end = i;
                if (o->text_unit == TEXT_UNIT_PARAGRAPH && end < n) end++;  // keep the paragraph's newline
                if (end > start) rc = add_doc(c, domain, data + start, end - start, o, err);
                start = next;
                i = next;
            } else {
                i++;
            }
        }
    }
    free(data);
    return rc;
}

int corpus_read_text(Corpus *c, int domain, const char *path, ReadOptions *o, MoeErr *err) {
    struct stat st;
    if (stat(path, &st) != 0) return moe_err_set(err, "cannot open '%s': %s", path, strerror(errno));
    if (!S_ISDIR(st.st_mode)) return read_one_text(c, domain, path, o, err);
    DIR *d = opendir(path);
    if (!d) return moe_err_set(err, "cannot open directory '%s': %s", path, strerror(errno));
    char **names = NULL;
    size_t n = 0, cap = 0;
    int rc = 0;
    struct dirent *e;
    while ((e = readdir(d)) != NULL && rc == 0) {
        if (e->d_name[0] == '.') continue;
        char full[4096];
        if (snprintf(full, sizeof(full), "%s/%s", path, e->d_name) >= (int)sizeof(full)) continue;
        struct stat fs;
        if (stat(full, &fs) != 0 || !S_ISREG(fs.st_mode)) continue;
        if (n == cap) {
            cap = cap ? 2 * cap : 64;
            char **p = (char **)realloc(names, cap * sizeof(char *));
            if (!p) {
                rc = moe_err_set(err, "out of memory");
                break;
            }
            names = p;
        }
        names[n] = strdup(full);
        if (!names[n]) rc = moe_err_set(err, "out of memory");
        else n++;
    }
    closedir(d);
    if (rc == 0 && n == 0) rc = moe_err_set(err, "directory '%s' holds no regular files", path);
    if (rc == 0) qsort(names, n, sizeof(char *), cmp_str);
    for (size_t i = 0; i < n && rc == 0; i++) rc = read_one_text(c, domain, names[i], o, err);
    for (size_t i = 0; i < n; i++) free(names[i]);
    free(names);
    return rc;
}

// member `field` of obj, "a.b" walks nested objects
static const cJSON *json_field(const cJSON *obj, const char *field) {
    char key[256];
    const char *p = field;
    const cJSON *cur = obj;
    while (cur) {
        const char *dot = strchr(p, '.');
        size_t kl = dot ? (size_t)(dot - p) : strlen(p);
        if (kl >= sizeof(key)) return NULL;
        memcpy(key, p, kl);
        key[kl] = '\0';
        cur = cJSON_IsObject(cur) ? cJSON_GetObjectItemCaseSensitive(cur, key) : NULL;
        if (!dot) return cur;
        p = dot + 1;
    }
    return NULL;
}

// a whole-file JSON array of objects (what many tools write as .json): 1 = handled
static int read_json_array(Corpus *c, int domain, const char *path, const char *data, size_t n, const char *field,
                           ReadOptions *o, int *rc, MoeErr *err) {
    size_t k = 0;
    while (k < n && isspace((unsigned char)data[k])) k++;
    if (k >= n || data[k] != '[') return 0;
    cJSON *arr = cJSON_ParseWithLength(data, n);
    if (!arr || !cJSON_IsArray(arr)) {  // not a single JSON array: read as JSON Lines
        cJSON_Delete(arr);
        return 0;
    }
    int64_t idx = 0, found = 0;
    *rc = 0;
    for (const cJSON *el = arr->child; el && *rc == 0; el = el->next, idx++) {
        const cJSON *v = cJSON_IsObject(el) ? json_field(el, field) : NULL;
        if (!v || !cJSON_IsString(v)) {
            if (o->skip_bad) o->n_skipped++;
            else *rc = moe_err_set(err, "'%s' array element %lld: no string field '%s'", path, (long long)idx, field);
            continue;
        }
        *rc = add_doc(c, domain, v->valuestring, strlen(v->valuestring), o, err);
        found++;
    }
    cJSON_Delete(arr);
    if (*rc == 0 && found == 0) *rc = moe_err_set(err, "'%s': no array element has a string field '%s'", path, field);
    return 1;
}

int corpus_read_jsonl(Corpus *c, int domain, const char *path, const char *field, ReadOptions *o, MoeErr *err) {
    char *data = NULL;
    size_t n = 0;
    if (read_text_file(path, &data, &n, err)) return -1;
    int rc = 0;
    if (read_json_array(c, domain, path, data, n, field, o, &rc, err)) {
        free(data);
        return rc;
    }
    int64_t line_no = 0, found = 0;
    for (size_t i = 0; i < n && rc == 0;) {
        size_t j = i;
        while (j < n && data[j] != '\n') j++;
        line_no++;
        const char *line = data + i;
        size_t len = j - i;
        i = j + 1;
        if (is_blank(line, len)) continue;
        cJSON *obj = cJSON_ParseWithLength(line, len);
        const char *why = NULL;
        char whybuf[320];
        const cJSON *v = NULL;
        if (!obj) {
            const char *ep = cJSON_GetErrorPtr();
            long col = (ep && ep >= line && ep <= line + len) ? (long)(ep - line) + 1 : 0;
            snprintf(whybuf, sizeof(whybuf), "not valid JSON (near column %ld)", col);
            why = whybuf;
        } else if (!cJSON_IsObject(obj)) {
            why = "not a JSON object";
        } else {
            v = json_field(obj, field);
            if (!v) {
                snprintf(whybuf, sizeof(whybuf), "no field '%s'", field);
                why = whybuf;
            } else if (!cJSON_IsString(v)) {
                snprintf(whybuf, sizeof(whybuf), "field '%s' is not a string", field);
                why = whybuf;
            }
        }
        if (why) {
            if (o->skip_bad) {
                o->n_skipped++;
            } else {
                rc = moe_err_set(err, "'%s' line %lld: %s", path, (long long)line_no, why);
            }
        } else {
            const char *s = v->valuestring;
            rc = add_doc(c, domain, s, strlen(s), o, err);
            found++;
        }
        cJSON_Delete(obj);
    }
    free(data);
    if (rc == 0 && found == 0) rc = moe_err_set(err, "'%s': no line has a string field '%s'", path, field);
    return rc;
}

// One CSV record starting at *pos: fields as (start, len) into an unescaped copy `cell`.
typedef struct {
    Buf cells;        // unescaped fields, each followed by NUL
    size_t *offs;     // (n) start of each field in cells
    size_t n, cap;
} CsvRow;

// returns 1 when a record was read, 0 at end of input, -1 on error (unterminated quote)
static int csv_next(const char *d, size_t n, size_t *pos, char sep, CsvRow *row, int64_t *line) {
    size_t i = *pos;
    if (i >= n) return 0;
    row->cells.n = 0;
    row->n = 0;
    for (;;) {
        if (row->n == row->cap) {
            row->cap = row->cap ? 2 * row->cap : 16;
            size_t *p = (size_t *)realloc(row->offs, row->cap * sizeof(size_t));
            if (!p) return -2;
            row->offs = p;
        }
        row->offs[row->n++] = row->cells.n;
        if (i < n && d[i] == '"') {
            i++;
            for (;;) {
                if (i >= n) return -1;
                if (d[i] == '"') {
                    if (i + 1 < n && d[i + 1] == '"') {
                        buf_putc(&row->cells, '"');
                        i += 2;
                        continue;
                    }
                    i++;
                    break;
                }
                if (d[i] == '\n') (*line)++;
                buf_putc(&row->cells, d[i]);
                i++;
            }
            // anything up to the separator after the closing quote is kept as is
            while (i < n && d[i] != sep && d[i] != '\n' && d[i] != '\r') buf_putc(&row->cells, d[i++]);
        } else {
            while (i < n && d[i] != sep && d[i] != '\n' && !(d[i] == '\r' && (i + 1 >= n || d[i + 1] == '\n')))
                buf_putc(&row->cells, d[i++]);
        }
        buf_putc(&row->cells, '\0');
        if (i < n && d[i] == sep) {
            i++;
            continue;
        }
        if (i < n && d[i] == '\r') i++;
        if (i < n && d[i] == '\n') i++;
        break;
    }
    *pos = i;
    return row->cells.oom ? -2 : 1;
}

int corpus_read_csv(Corpus *c, int domain, const char *path, char sep, const char *column, ReadOptions *o,
                    MoeErr *err) {
    char *data = NULL;
    size_t n = 0;
    if (read_text_file(path, &data, &n, err)) return -1;
    size_t pos = 0;
    if (n >= 3 && memcmp(data, "\xEF\xBB\xBF", 3) == 0) pos = 3;  // UTF-8 byte order mark
    CsvRow row = {0};
    int rc = 0;
    int64_t line = 1, found = 0;
    long col = -1;  // 0-based
    char *end = NULL;
    long num = strtol(column, &end, 10);
    int by_number = end != column && *end == '\0';
    if (by_number) {
        if (num < 1) rc = moe_err_set(err, "'%s': column %ld must be >= 1 (columns are numbered from 1)", path, num);
        col = num - 1;
    } else if (!o->csv_header) {
        rc = moe_err_set(err, "'%s': column '%s' given by name but the file has no header row", path, column);
    }
    int first = 1;
    while (rc == 0) {
        int64_t row_line = line;
        int r = csv_next(data, n, &pos, sep, &row, &line);
        if (r == 0) break;
        if (r == -1) {
            rc = moe_err_set(err, "'%s' line %lld: unterminated quoted field", path, (long long)row_line);
            break;
        }
        if (r < 0) {
            rc = moe_err_set(err, "out of memory reading '%s'", path);
            break;
        }
        line++;
        if (row.n == 1 && row.cells.n == 1) continue;  // empty line
        if (first && o->csv_header) {
            first = 0;
            if (!by_number) {
                for (size_t k = 0; k < row.n; k++) {
                    const char *h = row.cells.p + row.offs[k];
                    while (*h == ' ') h++;
                    if (strcmp(h, column) == 0) col = (long)k;
                }
                if (col < 0) {
                    rc = moe_err_set(err, "'%s' line %lld: the header has no column named '%s'", path,
                                     (long long)row_line, column);
                    break;
                }
            }
            continue;
        }
        first = 0;
        if ((size_t)col >= row.n) {
            if (o->skip_bad) {
                o->n_skipped++;
                continue;
            }
            rc = moe_err_set(err, "'%s' line %lld: row has %zu column(s), column %ld wanted", path, (long long)row_line,
                             row.n, col + 1);
            break;
        }
        const char *s = row.cells.p + row.offs[col];
        rc = add_doc(c, domain, s, strlen(s), o, err);
        found++;
    }
    free(row.cells.p);
    free(row.offs);
    free(data);
    if (rc == 0 && found == 0) rc = moe_err_set(err, "'%s': no data rows", path);
    return rc;
}

static int ends_with(const char *s, const char *suf) {
    size_t n = strlen(s), m = strlen(suf);
    return n >= m && strcasecmp(s + n - m, suf) == 0;
}

int corpus_read_input(Corpus *c, const char *spec, ReadOptions *o, MoeErr *err) {
    const char *eq = strchr(spec, '=');
    if (!eq || eq == spec || eq[1] == '\0')
        return moe_err_set(err, "input '%s': expected DOMAIN=PATH[:FIELD]", spec);
    char name[64];
    size_t nl = (size_t)(eq - spec);
    if (nl >= sizeof(name)) return moe_err_set(err, "input '%s': domain name too long", spec);
    memcpy(name, spec, nl);
    name[nl] = '\0';
    int domain = corpus_domain(c, name, err);
    if (domain < 0) return -1;
    char path[4096];
    snprintf(path, sizeof(path), "%s", eq + 1);
    const char *field = NULL;
    struct stat st;
    if (stat(path, &st) != 0) {  // not a file as a whole: PATH:FIELD
        char *colon = strrchr(path, ':');
        if (colon && colon[1] != '\0' && colon != path) {
            *colon = '\0';
            field = colon + 1;
        }
    }
    if (ends_with(path, ".jsonl") || ends_with(path, ".ndjson") || ends_with(path, ".json"))
        return corpus_read_jsonl(c, domain, path, field ? field : "text", o, err);
    if (ends_with(path, ".csv")) return corpus_read_csv(c, domain, path, ',', field ? field : "text", o, err);
    if (ends_with(path, ".tsv") || ends_with(path, ".tab"))
        return corpus_read_csv(c, domain, path, '\t', field ? field : "text", o, err);
    if (field) return moe_err_set(err, "input '%s': a field/column is only meaningful for .jsonl/.csv/.tsv files", spec);
    return corpus_read_text(c, domain, path, o, err);
}
