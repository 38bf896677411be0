// Tests of data/corpus.c: dictionary markup normalisation (known values), dictd reading
// (a small database made here, plus a slice of the real Debian ones when installed), the
// bible parser, C headers, and user files: plain text, JSONL and CSV/TSV including every
// kind of bad input (missing, empty, NUL bytes, invalid UTF-8, bad JSON, missing field,
// short CSV rows, unterminated quotes).
#include <unistd.h>
#include <zlib.h>

#include "../data/corpus.h"
#include "test.h"

static char g_dir[64];

static const char *tmp_path(const char *name) {
    static char buf[8][256];
    static int k = 0;
    k = (k + 1) % 8;
    snprintf(buf[k], sizeof buf[k], "%s/%s", g_dir, name);
    return buf[k];
}

static void write_file(const char *path, const char *data, size_t n) {
    FILE *fp = fopen(path, "wb");
    if (!fp) return;
    if (n) fwrite(data, 1, n, fp);
    fclose(fp);
}
static void write_str(const char *path, const char *s) { write_file(path, s, strlen(s)); }

// normalise a C string, return a malloc'd copy of the result
static char *norm(const char *s, int style) {
    size_t n = strlen(s);
    char *t = (char *)malloc(n + 1);
    memcpy(t, s, n + 1);
    size_t m = dict_normalize(t, n, style);
    t[m] = '\0';
    return t;
}

static void test_utf8(void) {
    test_begin("utf8_invalid_count");
    CHECK(utf8_invalid_count("hello", 5) == 0, "ascii");
    const char *mb = "h\xc3\xa9llo \xe2\x82\xac \xf0\x9f\x98\x80";
    CHECK(utf8_invalid_count(mb, strlen(mb)) == 0, "valid multibyte");
    CHECK(utf8_invalid_count("\xff", 1) == 1, "0xff");
    CHECK(utf8_invalid_count("a\xc3", 2) == 1, "truncated sequence");
    CHECK(utf8_invalid_count("\xc0\xaf", 2) == 2, "overlong");
    CHECK(utf8_invalid_count("\xed\xa0\x80", 3) == 3, "surrogate");
    CHECK(utf8_invalid_count("\x80\x80x", 3) == 2, "stray continuations");
    test_end();
}

static void test_domains(void) {
    test_begin("corpus_domain_names");
    Corpus c = {0};
    MoeErr err;
    CHECK(corpus_domain(&c, "bible", &err) == 0, "first");
    CHECK(corpus_domain(&c, "code", &err) == 1, "second");
    CHECK(corpus_domain(&c, "bible", &err) == 0, "existing");
    CHECK(corpus_domain(&c, "", &err) < 0, "empty name");
    CHECK(corpus_domain(&c, "has space", &err) < 0 && strstr(err.msg, "has space"), "space: %s", err.msg);
    CHECK(corpus_domain(&c, "a_name_that_is_longer_than_thirty_one", &err) < 0, "long");
    CHECK(c.n_domains == 2, "count");
    corpus_free(&c);
    test_end();
}

static void test_normalize(void) {
    test_begin("dict_normalize_gcide");
    {
        const char *in =
            "Abandon \\A*ban\"don\\ ([.a]*b[a^]n\"d[u^]n), v. t. [imp. & p. p.\n"
            "   {Abandoned} (-d[u^]nd); p. pr. & vb. n. {Abandoning}.] [OF.\n"
            "   abandoner.]\n"
            "   1. To cast or drive out; to banish; to expel; to reject.\n"
            "      [Obs.]\n"
            "      [1913 Webster]\n"
            "\n"
            "            That he might . . . abandon them from him. --Udall.\n"
            "      [1913 Webster]\n"
            "\n"
            "Abandon \\A*ban\"don\\, n. (Law)\n"
            "   2. To give up absolutely; to forsake entirely; to renounce\n"
            "      utterly; to relinquish all connection with or concern on.\n"
            "      [WordNet 1.5 +PJC]\n"
            "\n"
            "   Syn: To give up; yield; forego; cede; surrender; resign;\n"
            "        abdicate; quit.\n"
            "   Encyclop[ae]dia, na[i^]ve\n";
        const char *want =
            "Abandon, v. t. [imp. & p. p. Abandoned (-dŭnd); p. pr. & vb. n. Abandoning.] [OF. abandoner.]\n"
            "1. To cast or drive out; to banish; to expel; to reject. [Obs.]\n"
            "\n"
            "That he might . . . abandon them from him. --Udall.\n"
            "\n"
            "Abandon, n. (Law)\n"
            "2. To give up absolutely; to forsake entirely; to renounce utterly; to relinquish all connection with "
            "or concern on.\n"
            "\n"
            "Syn: To give up; yield; forego; cede; surrender; resign; abdicate; quit.\n"
            "Encyclopædia, naĭve\n";
        char *got = norm(in, DICT_GCIDE);
        CHECK(strcmp(got, want) == 0, "got:\n%s\nwant:\n%s", got, want);
        free(got);
    }
    test_end();

    test_begin("dict_normalize_jargon_foldoc");
    {
        const char *in =
            "/dev/null\n"
            " /dev·nuhl/, n.\n"
            "\n"
            "    [from the Unix null device, used as a data sink] A notional ‘black hole’ in\n"
            "    any information space being discussed, referred to or used. See {bit\n"
            "    bucket} and { crippleware}.\n"
            "\n"
            "        int main() { return 0; }\n"
            "        x = y;\n";
        const char *want =
            "/dev/null\n"
            "/dev·nuhl/, n.\n"
            "\n"
            "[from the Unix null device, used as a data sink] A notional ‘black hole’ in any information space being "
            "discussed, referred to or used. See bit bucket and crippleware.\n"
            "\n"
            "int main() { return 0; }\n"
            "x = y;\n";
        char *got = norm(in, DICT_PLAIN);
        CHECK(strcmp(got, want) == 0, "got:\n%s\nwant:\n%s", got, want);
        free(got);
        got = norm("Verse\n\n      For wisdom is most riches; fools therefore\n      They are which fortunes do by vows "
                   "devise.\n", DICT_PLAIN);
        CHECK(strcmp(got, "Verse\n\nFor wisdom is most riches; fools therefore\nThey are which fortunes do by vows "
                          "devise.\n") == 0,
              "verse lines kept: '%s'", got);
        free(got);
        got = norm("(TM)\n //\n\n    Text.\n", DICT_PLAIN);
        CHECK(strcmp(got, "(TM)\n\nText.\n") == 0, "empty pronunciation dropped: '%s'", got);
        free(got);
        got = norm("", DICT_PLAIN);
        CHECK(got[0] == '\0', "empty");
        free(got);
        got = norm("\n\n   \n", DICT_PLAIN);
        CHECK(got[0] == '\0', "blank");
        free(got);
    }
    test_end();
}

// base64 as dictd writes it
static void b64(uint64_t v, char *out) {
    const char *al = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    char tmp[16];
    int n = 0;
    do {
        tmp[n++] = al[v % 64];
        v /= 64;
    } while (v);
    for (int i = 0; i < n; i++) out[i] = tmp[n - 1 - i];
    out[n] = '\0';
}

static void test_dictd_small(void) {
    test_begin("dictd_small_database");
    const char *entries[] = {"00-database-info\nThis is info.\n", "apple\n   A red {fruit}.\n",
                             "banana\n   A yellow fruit, long and curved, that grows in bunches on a tall plant\n"
                             "   in warm countries.\n"};
    char dict_text[512] = "";
    char index[1024] = "";
    size_t off = 0;
    const char *heads[] = {"00-database-info", "apple", "banana"};
    for (int i = 0; i < 3; i++) {
        size_t len = strlen(entries[i]);
        strcat(dict_text, entries[i]);
        char o[16], l[16], line[128];
        b64(off, o);
        b64(len, l);
        snprintf(line, sizeof line, "%s\t%s\t%s\n", heads[i], o, l);
        strcat(index, line);
        if (i == 1) {  // a second headword for the same entry, out of order
            snprintf(line, sizeof line, "pomme\t%s\t%s\n", o, l);
            strcat(index, line);
        }
        off += len;
    }
    const char *dz = tmp_path("small.dict.dz"), *ix = tmp_path("small.index");
    gzFile gz = gzopen(dz, "wb");
    gzwrite(gz, dict_text, (unsigned)strlen(dict_text));
    gzclose(gz);
    write_str(ix, index);
    Corpus c = {0};
    MoeErr err;
    int d = corpus_domain(&c, "dict", &err);
    int rc = corpus_read_dictd(&c, d, dz, ix, DICT_PLAIN, 0, &err);
    CHECK(rc == 0, "read: %s", err.msg);
    CHECK(c.n_docs == 2, "2 documents expected (info skipped, duplicate merged), got %lld", (long long)c.n_docs);
    if (c.n_docs == 2) {
        CHECK(strcmp(c.docs[0].text, "apple\nA red fruit.\n") == 0, "doc 0: '%s'", c.docs[0].text);
        CHECK(strstr(c.docs[1].text, "plant in warm") != NULL, "doc 1 joined: '%s'", c.docs[1].text);
    }
    corpus_free(&c);
    // bad index lines
    write_str(ix, "apple\tA\n");
    d = corpus_domain(&c, "dict", &err);
    CHECK(corpus_read_dictd(&c, d, dz, ix, DICT_PLAIN, 0, &err) != 0 && strstr(err.msg, "line 1") &&
              strstr(err.msg, ix),
          "missing column: %s", err.msg);
    write_str(ix, "apple\tA\tB\nbanana\tA!\tB\n");
    CHECK(corpus_read_dictd(&c, d, dz, ix, DICT_PLAIN, 0, &err) != 0 && strstr(err.msg, "line 2"), "bad base64: %s",
          err.msg);
    write_str(ix, "apple\tA\tzzzz\n");
    CHECK(corpus_read_dictd(&c, d, dz, ix, DICT_PLAIN, 0, &err) != 0 && strstr(err.msg, "beyond"), "beyond: %s",
          err.msg);
    CHECK(corpus_read_dictd(&c, d, dz, tmp_path("nope.index"), DICT_PLAIN, 0, &err) != 0 &&
              strstr(err.msg, "nope.index"),
          "missing index: %s", err.msg);
    write_str(ix, "apple\tA\tB\n");
    CHECK(corpus_read_dictd(&c, d, tmp_path("nope.dict.dz"), ix, DICT_PLAIN, 0, &err) != 0 &&
              strstr(err.msg, "nope.dict.dz"),
          "missing dict: %s", err.msg);
    // a corrupt gzip stream
    {
        char bad[64];
        memset(bad, 0, sizeof bad);
        bad[0] = 0x1f;
        bad[1] = (char)0x8b;
        bad[2] = 8;
        for (int i = 10; i < 64; i++) bad[i] = (char)(i * 37);
        write_file(tmp_path("corrupt.dict.dz"), bad, sizeof bad);
        CHECK(corpus_read_dictd(&c, d, tmp_path("corrupt.dict.dz"), ix, DICT_PLAIN, 0, &err) != 0 &&
                  strstr(err.msg, "corrupt.dict.dz"),
              "corrupt gzip: %s", err.msg);
    }
    corpus_free(&c);
    test_end();
}

static void test_dictd_real(void) {
    static const struct {
        const char *name;
        int style;
    } dicts[] = {{"gcide", DICT_GCIDE}, {"jargon", DICT_PLAIN}, {"foldoc", DICT_PLAIN}};
    for (int k = 0; k < 3; k++) {
        char name[64], dz[128], ix[128];
        snprintf(name, sizeof name, "dictd_real_%s_slice", dicts[k].name);
        snprintf(dz, sizeof dz, "/usr/share/dictd/%s.dict.dz", dicts[k].name);
        snprintf(ix, sizeof ix, "/usr/share/dictd/%s.index", dicts[k].name);
        if (!file_exists(dz) || !file_exists(ix)) {
            test_skip(name, "%s not installed (Debian package dict-%s)", dz, dicts[k].name);
            continue;
        }
        test_begin(name);
        Corpus c = {0};
        MoeErr err;
        int d = corpus_domain(&c, dicts[k].name, &err);
        int rc = corpus_read_dictd(&c, d, dz, ix, dicts[k].style, 300, &err);
        CHECK(rc == 0, "read: %s", err.msg);
        CHECK(c.n_docs == 300, "300 entries, got %lld", (long long)c.n_docs);
        int tags = 0, braces = 0, empty = 0, dbinfo = 0;
        for (int64_t i = 0; i < c.n_docs; i++) {
            const char *t = c.docs[i].text;
            if (strstr(t, "[1913 Webster]") || strstr(t, "[WordNet 1.5]")) tags++;
            if (dicts[k].style == DICT_GCIDE && (strchr(t, '{') || strchr(t, '\\'))) braces++;
            if (c.docs[i].len < 2) empty++;
            if (strstr(t, "00-database")) dbinfo++;
        }
        CHECK(tags == 0, "%d entries keep source tags", tags);
        CHECK(braces == 0, "%d gcide entries keep braces or backslashes", braces);
        CHECK(empty == 0 && dbinfo == 0, "empty %d, database info %d", empty, dbinfo);
        corpus_free(&c);
        test_end();
    }
}

static void test_bible(void) {
    test_begin("bible_parse");
    {
        const char *out = "\nGenesis 1\n\n  1 In the beginning God created the heaven and the earth.\n  2 And the "
                          "earth was without form.\n\nGenesis 2\n\n  1 Thus the heavens.\n";
        Corpus c = {0};
        MoeErr err;
        int d = corpus_domain(&c, "bible", &err);
        CHECK(corpus_parse_bible(&c, d, out, strlen(out), "test", &err) == 0, "parse: %s", err.msg);
        CHECK(c.n_docs == 2, "chapters %lld", (long long)c.n_docs);
        if (c.n_docs == 2) {
            CHECK(strcmp(c.docs[0].text,
                         "Genesis 1\n\n1 In the beginning God created the heaven and the earth.\n2 And the earth was "
                         "without form.\n") == 0,
                  "doc 0: '%s'", c.docs[0].text);
            CHECK(strcmp(c.docs[1].text, "Genesis 2\n\n1 Thus the heavens.\n") == 0, "doc 1: '%s'", c.docs[1].text);
        }
        CHECK(corpus_parse_bible(&c, d, "  1 verse first\n", 16, "test", &err) != 0 && strstr(err.msg, "line 1"),
              "verse without title: %s", err.msg);
        CHECK(corpus_parse_bible(&c, d, "", 0, "test", &err) != 0, "no output");
        corpus_free(&c);
    }
    test_end();
    if (!file_exists("/usr/bin/bible")) {
        test_skip("bible_real", "/usr/bin/bible not installed (Debian package bible-kjv)");
        return;
    }
    test_begin("bible_real");
    Corpus c = {0};
    MoeErr err;
    int d = corpus_domain(&c, "bible", &err);
    CHECK(corpus_read_bible(&c, d, "/usr/bin/bible", &err) == 0, "read: %s", err.msg);
    CHECK(c.n_docs == 1189, "1189 chapters expected, got %lld", (long long)c.n_docs);
    if (c.n_docs > 0) {
        CHECK(strncmp(c.docs[0].text, "Genesis 1\n\n1 In the beginning God created the heaven and the earth.\n", 68) == 0,
              "first chapter: %.80s", c.docs[0].text);
        CHECK(strncmp(c.docs[c.n_docs - 1].text, "Revelation 22\n", 14) == 0, "last chapter: %.40s",
              c.docs[c.n_docs - 1].text);
    }
    CHECK(corpus_read_bible(&c, d, "/nonexistent/bible", &err) != 0 && strstr(err.msg, "bible-kjv"), "missing: %s",
          err.msg);
    corpus_free(&c);
    test_end();
}

static void test_code(void) {
    test_begin("code_headers");
    char dir[128];
    snprintf(dir, sizeof dir, "%s/inc", g_dir);
    char sub[160];
    snprintf(sub, sizeof sub, "%s/sys", dir);
    MoeErr err;
    make_dirs(sub, &err);
    write_str(tmp_path("inc/b.h"), "#define B 2\n");
    write_str(tmp_path("inc/a.h"), "#define A 1\n");
    write_str(tmp_path("inc/sys/c.h"), "int c(void);\n");
    write_str(tmp_path("inc/notes.txt"), "not a header\n");
    write_file(tmp_path("inc/bin.h"), "ab\0cd", 5);
    Corpus c = {0};
    int d = corpus_domain(&c, "code", &err);
    CHECK(corpus_read_code(&c, d, dir, 1 << 20, &err) == 0, "read: %s", err.msg);
    CHECK(c.n_docs == 3, "3 headers expected, got %lld", (long long)c.n_docs);
    if (c.n_docs == 3) {
        CHECK(strcmp(c.docs[0].text, "#define A 1\n") == 0 && strcmp(c.docs[2].text, "int c(void);\n") == 0,
              "sorted by path");
    }
    CHECK(corpus_read_code(&c, d, tmp_path("nodir"), 1 << 20, &err) != 0 && strstr(err.msg, "nodir"), "missing dir");
    corpus_free(&c);
    test_end();
}

static void test_text(void) {
    test_begin("text_files");
    Corpus c = {0};
    MoeErr err;
    ReadOptions o;
    read_options_default(&o);
    int d = corpus_domain(&c, "notes", &err);
    write_str(tmp_path("t1.txt"), "First paragraph\nstill first.\n\nSecond.\n \n\n\nThird\n");
    CHECK(corpus_read_text(&c, d, tmp_path("t1.txt"), &o, &err) == 0, "file: %s", err.msg);
    CHECK(c.n_docs == 1, "one document per file");
    o.text_unit = TEXT_UNIT_PARAGRAPH;
    CHECK(corpus_read_text(&c, d, tmp_path("t1.txt"), &o, &err) == 0, "para: %s", err.msg);
    CHECK(c.n_docs == 4, "3 paragraphs, got %lld", (long long)c.n_docs - 1);
    if (c.n_docs == 4) {
        CHECK(strcmp(c.docs[1].text, "First paragraph\nstill first.\n") == 0, "para 1 '%s'", c.docs[1].text);
        CHECK(strcmp(c.docs[2].text, "Second.\n") == 0, "para 2 '%s'", c.docs[2].text);
        CHECK(strcmp(c.docs[3].text, "Third\n") == 0, "para 3 '%s'", c.docs[3].text);
    }
    o.text_unit = TEXT_UNIT_LINE;
    int64_t before = c.n_docs;
    CHECK(corpus_read_text(&c, d, tmp_path("t1.txt"), &o, &err) == 0, "line: %s", err.msg);
    CHECK(c.n_docs - before == 4, "4 non-blank lines, got %lld", (long long)(c.n_docs - before));
    o.text_unit = TEXT_UNIT_FILE;

    // a directory
    char dir[128];
    snprintf(dir, sizeof dir, "%s/txtdir", g_dir);
    make_dirs(dir, &err);
    write_str(tmp_path("txtdir/b.txt"), "bee\n");
    write_str(tmp_path("txtdir/a.txt"), "ay\n");
    before = c.n_docs;
    CHECK(corpus_read_text(&c, d, dir, &o, &err) == 0, "dir: %s", err.msg);
    CHECK(c.n_docs - before == 2 && strcmp(c.docs[before].text, "ay\n") == 0, "directory files sorted");

    // bad inputs
    CHECK(corpus_read_text(&c, d, tmp_path("missing.txt"), &o, &err) != 0 && strstr(err.msg, "missing.txt"),
          "missing: %s", err.msg);
    write_file(tmp_path("empty.txt"), "", 0);
    CHECK(corpus_read_text(&c, d, tmp_path("empty.txt"), &o, &err) != 0 && strstr(err.msg, "empty") &&
              strstr(err.msg, "empty.txt"),
          "empty: %s", err.msg);
    write_file(tmp_path("bin.txt"), "line one\nab\0cd", 14);
    CHECK(corpus_read_text(&c, d, tmp_path("bin.txt"), &o, &err) != 0 && strstr(err.msg, "NUL byte at byte 11") &&
              strstr(err.msg, "line 2") && strstr(err.msg, "bin.txt"),
          "NUL: %s", err.msg);
    write_str(tmp_path("latin1.txt"), "caf\xe9 na\xefve \xff\n");
    o.n_invalid_utf8 = 0;
    CHECK(corpus_read_text(&c, d, tmp_path("latin1.txt"), &o, &err) == 0, "invalid utf8 accepted: %s", err.msg);
    CHECK(o.n_invalid_utf8 == 3, "3 invalid bytes counted, got %lld", (long long)o.n_invalid_utf8);
    CHECK(memcmp(c.docs[c.n_docs - 1].text, "caf\xe9", 4) == 0, "bytes kept as they are");
    corpus_free(&c);
    test_end();
}

static void test_jsonl(void) {
    test_begin("jsonl_files");
    Corpus c = {0};
    MoeErr err;
    ReadOptions o;
    read_options_default(&o);
    int d = corpus_domain(&c, "rev", &err);
    const char *p = tmp_path("a.jsonl");
    write_str(p, "{\"text\": \"first \\u00e9\\n\", \"id\": 1}\n\n{\"text\": \"second\", \"meta\": {\"title\": \"T\"}}\n");
    CHECK(corpus_read_jsonl(&c, d, p, "text", &o, &err) == 0, "read: %s", err.msg);
    CHECK(c.n_docs == 2 && strcmp(c.docs[0].text, "first \xc3\xa9\n") == 0, "values");
    write_str(tmp_path("n.jsonl"), "{\"meta\": {\"title\": \"T\"}}\n");
    CHECK(corpus_read_jsonl(&c, d, tmp_path("n.jsonl"), "meta.title", &o, &err) == 0 && c.n_docs == 3 &&
              strcmp(c.docs[2].text, "T") == 0,
          "nested field: %s", err.msg);
    write_str(p, "{\"text\": \"ok\"}\n{\"text\": \"broken\n{\"body\": \"x\"}\n");
    CHECK(corpus_read_jsonl(&c, d, p, "text", &o, &err) != 0 && strstr(err.msg, "line 2") &&
              strstr(err.msg, "not valid JSON") && strstr(err.msg, "a.jsonl"),
          "bad JSON: %s", err.msg);
    write_str(p, "{\"text\": \"ok\"}\n{\"body\": \"x\"}\n");
    CHECK(corpus_read_jsonl(&c, d, p, "text", &o, &err) != 0 && strstr(err.msg, "line 2") &&
              strstr(err.msg, "no field 'text'"),
          "missing field: %s", err.msg);
    write_str(p, "{\"text\": 5}\n");
    CHECK(corpus_read_jsonl(&c, d, p, "text", &o, &err) != 0 && strstr(err.msg, "not a string"), "number: %s",
          err.msg);
    write_str(p, "[1, 2]\n");
    CHECK(corpus_read_jsonl(&c, d, p, "text", &o, &err) != 0 && strstr(err.msg, "element 0"), "array: %s",
          err.msg);
    write_str(p, "{\"text\": \"a\"}\n[1, 2]\n");
    CHECK(corpus_read_jsonl(&c, d, p, "text", &o, &err) != 0 && strstr(err.msg, "line 2: not a JSON object"),
          "array line: %s", err.msg);
    // skip_bad counts instead
    write_str(p, "{\"text\": \"ok\"}\nnot json\n{\"body\": \"x\"}\n{\"text\": \"ok2\"}\n");
    o.skip_bad = 1;
    int64_t before = c.n_docs;
    CHECK(corpus_read_jsonl(&c, d, p, "text", &o, &err) == 0, "skip_bad: %s", err.msg);
    CHECK(c.n_docs - before == 2 && o.n_skipped == 2, "2 kept 2 skipped");
    o.skip_bad = 0;
    // a whole-file JSON array
    write_str(tmp_path("arr.json"), "[\n {\"text\": \"one\"},\n {\"text\": \"two\"}\n]\n");
    before = c.n_docs;
    CHECK(corpus_read_jsonl(&c, d, tmp_path("arr.json"), "text", &o, &err) == 0 && c.n_docs - before == 2 &&
              strcmp(c.docs[before + 1].text, "two") == 0,
          "json array: %s", err.msg);
    write_str(tmp_path("arr.json"), "[{\"text\": \"one\"}, {\"other\": 1}]");
    CHECK(corpus_read_jsonl(&c, d, tmp_path("arr.json"), "text", &o, &err) != 0 && strstr(err.msg, "element 1"),
          "json array bad element: %s", err.msg);
    write_file(p, "", 0);
    CHECK(corpus_read_jsonl(&c, d, p, "text", &o, &err) != 0 && strstr(err.msg, "empty"), "empty: %s", err.msg);
    write_str(p, "\n\n");
    CHECK(corpus_read_jsonl(&c, d, p, "text", &o, &err) != 0, "only blank lines");
    corpus_free(&c);
    test_end();
}

static void test_csv(void) {
    test_begin("csv_tsv_files");
    Corpus c = {0};
    MoeErr err;
    ReadOptions o;
    read_options_default(&o);
    int d = corpus_domain(&c, "tab", &err);
    const char *p = tmp_path("a.csv");
    write_str(p,
              "id,text,stars\r\n"
              "1,plain,5\r\n"
              "2,\"with, comma and \"\"quotes\"\"\",4\r\n"
              "3,\"two\nlines\",3\r\n"
              "\r\n"
              "4,,1\r\n");
    CHECK(corpus_read_csv(&c, d, p, ',', "text", &o, &err) == 0, "by name: %s", err.msg);
    CHECK(c.n_docs == 3, "3 non-empty texts, got %lld", (long long)c.n_docs);
    if (c.n_docs == 3) {
        CHECK(strcmp(c.docs[0].text, "plain") == 0, "0: '%s'", c.docs[0].text);
        CHECK(strcmp(c.docs[1].text, "with, comma and \"quotes\"") == 0, "1: '%s'", c.docs[1].text);
        CHECK(strcmp(c.docs[2].text, "two\nlines") == 0, "2: '%s'", c.docs[2].text);
    }
    CHECK(o.n_empty == 1, "one empty text counted");
    int64_t before = c.n_docs;
    CHECK(corpus_read_csv(&c, d, p, ',', "3", &o, &err) == 0 && c.n_docs - before == 4 &&
              strcmp(c.docs[before].text, "5") == 0,
          "by number: %s", err.msg);
    CHECK(corpus_read_csv(&c, d, p, ',', "body", &o, &err) != 0 && strstr(err.msg, "no column named 'body'"),
          "unknown header: %s", err.msg);
    CHECK(corpus_read_csv(&c, d, p, ',', "0", &o, &err) != 0, "column 0");
    // too few columns: line numbers count the embedded newline
    write_str(p, "id,text\n1,\"a\nb\"\n2\n");
    CHECK(corpus_read_csv(&c, d, p, ',', "text", &o, &err) != 0 && strstr(err.msg, "line 4") &&
              strstr(err.msg, "1 column") && strstr(err.msg, "a.csv"),
          "short row: %s", err.msg);
    o.skip_bad = 1;
    CHECK(corpus_read_csv(&c, d, p, ',', "text", &o, &err) == 0 && o.n_skipped == 1, "short row skipped");
    o.skip_bad = 0;
    write_str(p, "id,text\n1,\"never closed\n2,x\n");
    CHECK(corpus_read_csv(&c, d, p, ',', "text", &o, &err) != 0 && strstr(err.msg, "line 2") &&
              strstr(err.msg, "unterminated"),
          "unterminated: %s", err.msg);
    // no header
    o.csv_header = 0;
    write_str(p, "a,b\nc,d\n");
    before = c.n_docs;
    CHECK(corpus_read_csv(&c, d, p, ',', "2", &o, &err) == 0 && c.n_docs - before == 2 &&
              strcmp(c.docs[before].text, "b") == 0,
          "no header: %s", err.msg);
    CHECK(corpus_read_csv(&c, d, p, ',', "text", &o, &err) != 0 && strstr(err.msg, "no header"), "name w/o header");
    o.csv_header = 1;
    // TSV
    const char *t = tmp_path("a.tsv");
    write_str(t, "text\tlabel\nhello world\tpos\n");
    before = c.n_docs;
    CHECK(corpus_read_csv(&c, d, t, '\t', "text", &o, &err) == 0 && c.n_docs - before == 1 &&
              strcmp(c.docs[before].text, "hello world") == 0,
          "tsv: %s", err.msg);
    // header only
    write_str(p, "id,text\n");
    CHECK(corpus_read_csv(&c, d, p, ',', "text", &o, &err) != 0 && strstr(err.msg, "no data rows"), "header only");
    corpus_free(&c);
    test_end();
}

static void test_input_spec(void) {
    test_begin("input_spec");
    Corpus c = {0};
    MoeErr err;
    ReadOptions o;
    read_options_default(&o);
    write_str(tmp_path("s.jsonl"), "{\"body\": \"b1\"}\n");
    write_str(tmp_path("s.csv"), "x,y\n1,why\n");
    write_str(tmp_path("s.txt"), "plain text\n");
    char spec[300];
    snprintf(spec, sizeof spec, "news=%s:body", tmp_path("s.jsonl"));
    CHECK(corpus_read_input(&c, spec, &o, &err) == 0, "jsonl field: %s", err.msg);
    snprintf(spec, sizeof spec, "reviews=%s:y", tmp_path("s.csv"));
    CHECK(corpus_read_input(&c, spec, &o, &err) == 0, "csv column: %s", err.msg);
    snprintf(spec, sizeof spec, "notes=%s", tmp_path("s.txt"));
    CHECK(corpus_read_input(&c, spec, &o, &err) == 0, "text: %s", err.msg);
    CHECK(c.n_docs == 3 && c.n_domains == 3, "3 docs in 3 domains");
    if (c.n_docs == 3) CHECK(strcmp(c.docs[1].text, "why") == 0 && c.docs[1].domain == 1, "csv doc");
    CHECK(corpus_read_input(&c, "nodomain", &o, &err) != 0 && strstr(err.msg, "DOMAIN=PATH"), "no '='");
    CHECK(corpus_read_input(&c, "=x.txt", &o, &err) != 0, "empty domain");
    snprintf(spec, sizeof spec, "bad name=%s", tmp_path("s.txt"));
    CHECK(corpus_read_input(&c, spec, &o, &err) != 0, "bad domain name");
    snprintf(spec, sizeof spec, "notes=%s:3", tmp_path("s.txt"));
    CHECK(corpus_read_input(&c, spec, &o, &err) != 0 && strstr(err.msg, "only meaningful"), "field on text: %s",
          err.msg);
    snprintf(spec, sizeof spec, "news=%s", tmp_path("s.jsonl"));
    CHECK(corpus_read_input(&c, spec, &o, &err) != 0 && strstr(err.msg, "'text'"), "default field text: %s",
          err.msg);
    corpus_free(&c);
    test_end();
}

int main(void) {
    snprintf(g_dir, sizeof g_dir, "/tmp/moe_test_corpus_XXXXXX");
    if (!mkdtemp(g_dir)) {
        printf("FAIL setup: mkdtemp\n");
        return 1;
    }
    test_utf8();
    test_domains();
    test_normalize();
    test_dictd_small();
    test_dictd_real();
    test_bible();
    test_code();
    test_text();
    test_jsonl();
    test_csv();
    test_input_spec();
    char cmd[128];
    snprintf(cmd, sizeof cmd, "rm -rf %s", g_dir);
    if (system(cmd) != 0) fprintf(stderr, "cleanup failed\n");
    return test_summary();
}
