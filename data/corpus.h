// Corpus extraction: text documents with named domains, from the built-in sources (Debian
// packages bible-kjv, dict-gcide, dict-jargon, dict-foldoc, the system's C headers) and
// from user files (plain text, JSONL with a chosen field, CSV/TSV with a chosen column).
// Every reader appends documents to a Corpus and returns 0, or -1 with a MoeErr naming
// the file and the line or byte that is wrong.
#ifndef MOE_CORPUS_H
#define MOE_CORPUS_H

#include <stddef.h>
#include <stdint.h>

#include "../common/util.h"
#include "shard.h"

typedef struct {
    char *text;  // malloc'd, NUL-terminated (the NUL is not part of the document)
    size_t len;
    int domain;
} CorpusDoc;

typedef struct {
    CorpusDoc *docs;  // (n_docs)
    int64_t n_docs, cap_docs;
    char (*domains)[SHARD_DOMAIN_NAME_LEN];  // (n_domains)
    int n_domains;
} Corpus;

// Index of the domain with this name, added when new. -1 (err) for a bad name: names are
// 1..31 bytes of [A-Za-z0-9_.-].
int corpus_domain(Corpus *c, const char *name, MoeErr *err);
// Append a copy of text[0..len) as a document of `domain`.
int corpus_add(Corpus *c, int domain, const char *text, size_t len, MoeErr *err);
void corpus_free(Corpus *c);
// Total bytes of the documents of one domain (-1: all domains).
int64_t corpus_bytes(const Corpus *c, int domain);

// Count of invalid UTF-8 sequences (each maximal invalid byte run counts as one per byte
// that cannot start or continue a valid sequence).
int64_t utf8_invalid_count(const char *s, size_t n);

// ---------------------------------------------------------------------------------------
// built-in sources

// The King James Bible from the `bible` program (bible-kjv): one document per chapter,
// "Genesis 1\n\n1 In the beginning ...\n2 ...". `program` is the path of `bible`.
int corpus_read_bible(Corpus *c, int domain, const char *program, MoeErr *err);
// Parse the pretty-printed output of `bible -l10000 gen1:1-rev22:21` (exposed for tests).
int corpus_parse_bible(Corpus *c, int domain, const char *text, size_t n, const char *name, MoeErr *err);

enum { DICT_PLAIN = 0, DICT_GCIDE = 1 };
// A dictd database: `index` (headword TAB base64 offset TAB base64 length) and `dict`
// (.dict or dictzip .dict.dz, read with zlib). One document per distinct entry, in file
// order; the 00-database-* entries are skipped. Markup is normalised to plain text
// (see dict_normalize). max_entries > 0 stops after that many entries (tests).
int corpus_read_dictd(Corpus *c, int domain, const char *dict, const char *index, int style, int64_t max_entries,
                      MoeErr *err);
// Normalise one dictionary entry in place, returns the new length: cross-reference braces
// {word} -> word, GCIDE pronunciation \A*ban"don\ and (phonetic) groups on the headword
// line removed, GCIDE character codes ([ae], [=a], ...) to UTF-8, source tag lines
// ([1913 Webster], [WordNet 1.5], [PJC]) removed, the indentation of each paragraph removed
// and wrapped lines of the same paragraph joined (deeper-indented lines such as quotations
// and code keep their relative indentation and line breaks).
size_t dict_normalize(char *text, size_t n, int style);

// C source: every regular file named *.h under `dir` (recursively, sorted by path), one
// document per file; files with NUL bytes or over max_file_bytes are skipped.
int corpus_read_code(Corpus *c, int domain, const char *dir, size_t max_file_bytes, MoeErr *err);

// ---------------------------------------------------------------------------------------
// user files

enum { TEXT_UNIT_FILE = 0, TEXT_UNIT_PARAGRAPH = 1, TEXT_UNIT_LINE = 2 };
typedef struct {
    int text_unit;      // plain text: one document per file, per blank-line paragraph or per line
    int csv_header;     // CSV/TSV: the first row is a header (default 1)
    int skip_bad;       // JSONL/CSV: skip bad lines/rows (counted) instead of failing
    int64_t n_skipped;  // out: bad lines/rows skipped
    int64_t n_empty;    // out: empty documents left out
    int64_t n_invalid_utf8;  // out: invalid UTF-8 sequences seen (kept as bytes)
} ReadOptions;
void read_options_default(ReadOptions *o);

// A plain text file, or every regular file of a directory (sorted). Fails on a missing or
// empty file and on NUL bytes (not a text file), naming the byte offset.
int corpus_read_text(Corpus *c, int domain, const char *path, ReadOptions *o, MoeErr *err);
// JSON Lines: one object per line, `field` (a string member; "a.b" for nested objects).
// A file that is one JSON array of objects is read element by element.
int corpus_read_jsonl(Corpus *c, int domain, const char *path, const char *field, ReadOptions *o, MoeErr *err);
// CSV (sep ',') or TSV (sep '\t') with RFC 4180 quoting; `column` is a 1-based number or a
// header name.
int corpus_read_csv(Corpus *c, int domain, const char *path, char sep, const char *column, ReadOptions *o,
                    MoeErr *err);

// "domain=path[:field]" -> format by extension (.jsonl/.ndjson/.json: JSONL, field default
// "text"; .csv / .tsv: column default "text"; anything else and directories: plain text).
int corpus_read_input(Corpus *c, const char *spec, ReadOptions *o, MoeErr *err);

#endif
