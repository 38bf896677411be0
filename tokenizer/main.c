// tokenizer: command-line front end of the byte-level BPE tokenizer.
//   tokenizer train  -o tok.json [-v 8192] [-p gpt4] [-s specials] [-m 2] FILE...
//   tokenizer encode -t tok.json [-S] [-o out] [FILE|-]
//   tokenizer decode -t tok.json [-o out] [FILE|-]
//   tokenizer stats  -t tok.json [FILE...]
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "../common/util.h"
#include "tokenizer.h"

static void usage(FILE *f) {
    fprintf(f,
            "usage: tokenizer <command> [options]\n"
            "commands:\n"
            "  train   train a byte-level BPE on text files, write a HF tokenizer.json\n"
            "          -o PATH     output tokenizer.json (required)\n"
            "          -v N        vocabulary size incl. 256 bytes and special tokens (default 8192)\n"
            "          -p NAME     pre-split pattern: gpt2 | gpt4 | qwen | deepseek | a PCRE2 regex (default gpt4)\n"
            "          -s LIST     comma-separated special tokens\n"
            "                      (default <|begin_of_text|>,<|end_of_text|>,<|pad|>; '' for none)\n"
            "          -m N        minimum pair count for a merge (default 2)\n"
            "          -q          quiet (no progress lines)\n"
            "          FILE...     training text (each file is one document; '-' = stdin)\n"
            "  encode  encode files, print ids separated by spaces, one line per file\n"
            "          -t PATH     tokenizer.json (required)\n"
            "          -S          recognise special tokens written in the text (default off: they are\n"
            "                      plain text; non-special added tokens are always recognised, as in HF)\n"
            "          -o PATH     output file (default stdout)\n"
            "          FILE...     inputs (default '-' = stdin)\n"
            "  decode  decode ids (whitespace separated) to the exact bytes\n"
            "          -t PATH     tokenizer.json (required)\n"
            "          -k          skip special tokens (default off)\n"
            "          -o PATH     output file (default stdout)\n"
            "          FILE        input (default '-' = stdin)\n"
            "  stats   vocabulary summary; with files: tokens, bytes/token, invalid UTF-8, round trip\n"
            "          -t PATH     tokenizer.json (required)\n"
            "          FILE...     optional text files\n"
            "  -h      this help\n");
}

static void die(const char *msg) {
    fprintf(stderr, "tokenizer: %s\n", msg);
    exit(EXIT_FAILURE);
}

static char *read_input(const char *path, size_t *n) {
    if (strcmp(path, "-") == 0) {
        size_t cap = 1 << 16, len = 0;
        char *buf = mallocCheck(cap);
        size_t got;
        while ((got = fread(buf + len, 1, cap - len, stdin)) > 0) {
            len += got;
            if (len == cap) {
                cap *= 2;
                char *nb = realloc(buf, cap);
                if (!nb) die("out of memory reading stdin");
                buf = nb;
            }
        }
        *n = len;
        return buf;
    }
    char *data;
    MoeErr err;
    if (read_file_all(path, &data, n, &err) != 0) die(err.msg);
    return data;
}

static Tokenizer *load_or_die(const char *path) {
    if (!path) die("missing -t tokenizer.json (see -h)");
    MoeErr err;
    Tokenizer *tok = tokenizer_load(path, &err);
    if (!tok) die(err.msg);
    return tok;
}

static FILE *open_out(const char *path) {
    if (!path || strcmp(path, "-") == 0) return stdout;
    FILE *f = fopen(path, "wb");
    if (!f) {
        fprintf(stderr, "tokenizer: cannot write '%s': %s\n", path, strerror(errno));
        exit(EXIT_FAILURE);
    }
    return f;
}

static void close_out(FILE *f, const char *path) {
    if (fflush(f) != 0 || ferror(f) || (f != stdout && fclose(f) != 0)) {
        fprintf(stderr, "tokenizer: write error on '%s'\n", path ? path : "stdout");
        exit(EXIT_FAILURE);
    }
}

static long parse_long(const char *s, const char *flag, long lo, long hi) {
    char *end;
    errno = 0;
    long v = strtol(s, &end, 10);
    if (errno || end == s || *end || v < lo || v > hi) {
        fprintf(stderr, "tokenizer: %s expects an integer in [%ld, %ld], got '%s'\n", flag, lo, hi, s);
        exit(EXIT_FAILURE);
    }
    return v;
}

// needs a value after flag i
static const char *flag_value(int argc, char **argv, int *i) {
    if (*i + 1 >= argc) {
        fprintf(stderr, "tokenizer: flag %s needs a value (see -h)\n", argv[*i]);
        exit(EXIT_FAILURE);
    }
    return argv[++*i];
}

static void unknown_flag(const char *f) {
    fprintf(stderr, "tokenizer: unknown flag '%s' (see -h)\n", f);
    exit(EXIT_FAILURE);
}

static int cmd_train(int argc, char **argv) {
    TokTrainConfig cfg;
    tok_train_config_default(&cfg);
    cfg.verbose = 1;
    const char *out = NULL, *specials = NULL;
    char **files = mallocCheck((size_t)argc * sizeof(char *));
    int n_files = 0;
    for (int i = 0; i < argc; i++) {
        if (strcmp(argv[i], "-o") == 0) out = flag_value(argc, argv, &i);
        else if (strcmp(argv[i], "-v") == 0) cfg.vocab_size = (int)parse_long(flag_value(argc, argv, &i), "-v", 256, 1 << 24);
        else if (strcmp(argv[i], "-p") == 0) cfg.pattern = flag_value(argc, argv, &i);
        else if (strcmp(argv[i], "-s") == 0) specials = flag_value(argc, argv, &i);
        else if (strcmp(argv[i], "-m") == 0) cfg.min_frequency = parse_long(flag_value(argc, argv, &i), "-m", 1, 1L << 40);
        else if (strcmp(argv[i], "-q") == 0) cfg.verbose = 0;
        else if (strcmp(argv[i], "-h") == 0) { usage(stdout); exit(0); }
        else if (argv[i][0] == '-' && argv[i][1]) unknown_flag(argv[i]);
        else files[n_files++] = argv[i];
    }
    if (!out) die("train: missing -o output path (see -h)");
    if (n_files == 0) die("train: no input files (see -h)");
    char *sp_copy = NULL;
    const char *sp_list[1024];
    if (specials) {
        sp_copy = strdup(specials);
        if (!sp_copy) die("out of memory");
        cfg.n_special = 0;
        for (char *t = strtok(sp_copy, ","); t; t = strtok(NULL, ",")) {
            if (cfg.n_special == 1024) die("train: too many special tokens (max 1024)");
            sp_list[cfg.n_special++] = t;
        }
        cfg.special_tokens = sp_list;
    }
    MoeErr err;
    TokTrainer *tr = tok_trainer_new(&cfg, &err);
    if (!tr) die(err.msg);
    size_t total = 0;
    double t0 = wall_seconds();
    for (int f = 0; f < n_files; f++) {
        size_t n;
        char *data = read_input(files[f], &n);
        if (n == 0) fprintf(stderr, "tokenizer: warning: '%s' is empty\n", files[f]);
        if (tok_trainer_feed(tr, data, n, &err) != 0) die(err.msg);
        total += n;
        free(data);
    }
    if (total == 0) die("train: the input files are empty");
    Tokenizer *tok = tok_trainer_finish(tr, &err);
    if (!tok) die(err.msg);
    tok_trainer_free(tr);
    if (tokenizer_save(tok, out, &err) != 0) die(err.msg);
    fprintf(stderr, "tokenizer: trained on %zu bytes in %.2f s: vocab %d (%d merges), wrote %s\n", total,
            wall_seconds() - t0, tokenizer_vocab_size(tok), tokenizer_n_merges(tok), out);
    tokenizer_free(tok);
    free(sp_copy);
    free(files);
    return 0;
}

static int cmd_encode(int argc, char **argv) {
    const char *tpath = NULL, *out = NULL;
    const char **files = mallocCheck((size_t)(argc + 1) * sizeof(char *));
    int flags = 0, n_files = 0;
    for (int i = 0; i < argc; i++) {
        if (strcmp(argv[i], "-t") == 0) tpath = flag_value(argc, argv, &i);
        else if (strcmp(argv[i], "-o") == 0) out = flag_value(argc, argv, &i);
        else if (strcmp(argv[i], "-S") == 0) flags |= TOK_ENCODE_SPECIAL;
        else if (strcmp(argv[i], "-h") == 0) { usage(stdout); exit(0); }
        else if (argv[i][0] == '-' && argv[i][1]) unknown_flag(argv[i]);
        else files[n_files++] = argv[i];
    }
    if (n_files == 0) files[n_files++] = "-";
    Tokenizer *tok = load_or_die(tpath);
    FILE *f = open_out(out);
    TokIds ids = {0};
    for (int k = 0; k < n_files; k++) {  // one line of ids per input
        size_t n;
        char *data = read_input(files[k], &n);
        MoeErr err;
        ids.n = 0;
        if (tokenizer_encode(tok, data, n, flags, &ids, &err) != 0) die(err.msg);
        for (size_t i = 0; i < ids.n; i++) fprintf(f, i ? " %d" : "%d", (int)ids.ids[i]);
        fprintf(f, "\n");
        free(data);
    }
    close_out(f, out);
    if (tokenizer_invalid_utf8(tok))
        fprintf(stderr, "tokenizer: note: %lld invalid UTF-8 sequences in the input (encoded as raw bytes)\n",
                (long long)tokenizer_invalid_utf8(tok));
    tok_ids_free(&ids);
    tokenizer_free(tok);
    free(files);
    return 0;
}

static int cmd_decode(int argc, char **argv) {
    const char *tpath = NULL, *out = NULL, *in = "-";
    int skip = 0, n_pos = 0;
    for (int i = 0; i < argc; i++) {
        if (strcmp(argv[i], "-t") == 0) tpath = flag_value(argc, argv, &i);
        else if (strcmp(argv[i], "-o") == 0) out = flag_value(argc, argv, &i);
        else if (strcmp(argv[i], "-k") == 0) skip = 1;
        else if (strcmp(argv[i], "-h") == 0) { usage(stdout); exit(0); }
        else if (argv[i][0] == '-' && argv[i][1]) unknown_flag(argv[i]);
        else { in = argv[i]; n_pos++; }
    }
    if (n_pos > 1) die("decode: give at most one input file");
    Tokenizer *tok = load_or_die(tpath);
    size_t n;
    char *data = read_input(in, &n);
    size_t cap = 1024, k = 0;
    int32_t *ids = mallocCheck(cap * sizeof(int32_t));
    char *p = data, *end = data + n;
    while (p < end) {
        while (p < end && (*p == ' ' || *p == '\n' || *p == '\t' || *p == '\r' || *p == ',')) p++;
        if (p >= end) break;
        char *q;
        errno = 0;
        long v = strtol(p, &q, 10);
        if (q == p || errno || v < 0 || v > INT32_MAX) {
            fprintf(stderr, "tokenizer: decode: %s: byte %zu: expected a token id\n", in, (size_t)(p - data));
            exit(EXIT_FAILURE);
        }
        if (k == cap) {
            cap *= 2;
            int32_t *ni = realloc(ids, cap * sizeof(int32_t));
            if (!ni) die("out of memory");
            ids = ni;
        }
        ids[k++] = (int32_t)v;
        p = q;
    }
    char *bytes;
    size_t nb;
    MoeErr err;
    if (tokenizer_decode(tok, ids, k, skip, &bytes, &nb, &err) != 0) die(err.msg);
    FILE *f = open_out(out);
    fwriteCheck(bytes, 1, nb, f);
    close_out(f, out);
    free(bytes);
    free(ids);
    free(data);
    tokenizer_free(tok);
    return 0;
}

static int cmd_stats(int argc, char **argv) {
    const char *tpath = NULL;
    char **files = mallocCheck((size_t)(argc ? argc : 1) * sizeof(char *));
    int n_files = 0;
    for (int i = 0; i < argc; i++) {
        if (strcmp(argv[i], "-t") == 0) tpath = flag_value(argc, argv, &i);
        else if (strcmp(argv[i], "-h") == 0) { usage(stdout); exit(0); }
        else if (argv[i][0] == '-' && argv[i][1]) unknown_flag(argv[i]);
        else files[n_files++] = argv[i];
    }
    Tokenizer *tok = load_or_die(tpath);
    printf("tokenizer:   %s\n", tpath);
    printf("vocab size:  %d\n", tokenizer_vocab_size(tok));
    printf("merges:      %d\n", tokenizer_n_merges(tok));
    printf("pre-split:   %s\n", tokenizer_pretok_name(tok));
    printf("bos/eos/pad: %d %d %d\n", tokenizer_bos_id(tok), tokenizer_eos_id(tok), tokenizer_pad_id(tok));
    int n_special = 0;
    for (int id = 0; id < tokenizer_vocab_size(tok); id++) n_special += tokenizer_is_special(tok, id);
    printf("special:     %d tokens\n", n_special);
    for (int f = 0; f < n_files; f++) {
        size_t n;
        char *data = read_input(files[f], &n);
        TokIds ids = {0};
        MoeErr err;
        tokenizer_reset_invalid_utf8(tok);
        double t0 = wall_seconds();
        if (tokenizer_encode(tok, data, n, 0, &ids, &err) != 0) die(err.msg);
        double dt = wall_seconds() - t0;
        char *back;
        size_t nb;
        if (tokenizer_decode(tok, ids.ids, ids.n, 0, &back, &nb, &err) != 0) die(err.msg);
        int ok = nb == n && memcmp(back, data, n) == 0;
        printf("%s: %zu bytes, %zu tokens, %.3f bytes/token, %lld invalid UTF-8 sequences, round trip %s, "
               "%.2f MB/s\n",
               files[f], n, ids.n, ids.n ? (double)n / (double)ids.n : 0.0, (long long)tokenizer_invalid_utf8(tok),
               ok ? "exact" : "DIFFERS", dt > 0 ? (double)n / dt / 1e6 : 0.0);
        free(back);
        tok_ids_free(&ids);
        free(data);
        if (!ok) die("round trip failed");
    }
    tokenizer_free(tok);
    free(files);
    return 0;
}

int main(int argc, char **argv) {
    if (argc < 2) {
        usage(stderr);
        return EXIT_FAILURE;
    }
    const char *cmd = argv[1];
    if (strcmp(cmd, "-h") == 0 || strcmp(cmd, "--help") == 0) {
        usage(stdout);
        return 0;
    }
    if (strcmp(cmd, "train") == 0) return cmd_train(argc - 2, argv + 2);
    if (strcmp(cmd, "encode") == 0) return cmd_encode(argc - 2, argv + 2);
    if (strcmp(cmd, "decode") == 0) return cmd_decode(argc - 2, argv + 2);
    if (strcmp(cmd, "stats") == 0) return cmd_stats(argc - 2, argv + 2);
    fprintf(stderr, "tokenizer: unknown command '%s' (see -h)\n", cmd);
    return EXIT_FAILURE;
}
