#include "flags.h"

#include <errno.h>
#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

static void format_value(const Flag *f, char *buf, size_t n) {
    switch (f->type) {
        case FLAG_INT: snprintf(buf, n, "%d", *(int *)f->dst); break;
        case FLAG_FLOAT: snprintf(buf, n, "%g", *(float *)f->dst); break;
        case FLAG_STR: snprintf(buf, n, "%s", *(char *)f->dst ? (char *)f->dst : "\"\""); break;
        case FLAG_BOOL: snprintf(buf, n, "%s", *(int *)f->dst ? "on" : "off"); break;
        case FLAG_U64: snprintf(buf, n, "%llu", (unsigned long long)*(uint64_t *)f->dst); break;
    }
}

void flags_snapshot_defaults(Flag *flags, int n) {
    for (int i = 0; i < n; i++) format_value(&flags[i], flags[i].deflt, sizeof(flags[i].deflt));
}

Flag *flags_find(Flag *flags, int n, const char *name) {
    for (int i = 0; i < n; i++)
        if (strcmp(flags[i].name, name) == 0) return &flags[i];
    return NULL;
}

static int set_value(Flag *f, const char *v) {
    char *end = NULL;
    errno = 0;
    switch (f->type) {
        case FLAG_INT: {
            long x = strtol(v, &end, 10);
            if (errno || !*v || *end || x < -2147483647L || x > 2147483647L) {
                fprintf(stderr, "error: --%s expects an integer, got '%s'\n", f->name, v);
                return -1;
            }
            *(int *)f->dst = (int)x;
            break;
        }
        case FLAG_FLOAT: {
            float x = strtof(v, &end);
            if (errno || !*v || *end || !isfinite(x)) {
                fprintf(stderr, "error: --%s expects a number, got '%s'\n", f->name, v);
                return -1;
            }
            *(float *)f->dst = x;
            break;
        }
        case FLAG_U64: {
            unsigned long long x = strtoull(v, &end, 10);
            if (errno || !*v || *end || *v == '-') {
                fprintf(stderr, "error: --%s expects a non-negative integer, got '%s'\n", f->name, v);
                return -1;
            }
            *(uint64_t *)f->dst = x;
            break;
        }
        case FLAG_STR:
            if (strlen(v) >= FLAG_STR_LEN) {
                fprintf(stderr, "error: --%s value is too long\n", f->name);
                return -1;
            }
            strcpy((char *)f->dst, v);
            break;
        case FLAG_BOOL:
            if (!strcmp(v, "1") || !strcmp(v, "on") || !strcmp(v, "true") || !strcmp(v, "yes")) *(int *)f->dst = 1;
            else if (!strcmp(v, "0") || !strcmp(v, "off") || !strcmp(v, "false") || !strcmp(v, "no")) *(int *)f->dst = 0;
            else {
                fprintf(stderr, "error: --%s expects on/off (1/0), got '%s'\n", f->name, v);
                return -1;
            }
            break;
    }
    f->set = 1;
    return 0;
}

int flags_parse(Flag *flags, int n, int argc, char **argv) {
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i];
        if (!strcmp(a, "-h") || !strcmp(a, "--help")) return 1;
        Flag *f = NULL;
        const char *val = NULL;
        char name[128];
        if (a[0] == '-' && a[1] == '-') {
            const char *eq = strchr(a + 2, '=');
            size_t len = eq ? (size_t)(eq - a - 2) : strlen(a + 2);
            if (len >= sizeof(name)) len = sizeof(name) - 1;
            memcpy(name, a + 2, len);
            name[len] = '\0';
            // accept both --name_with_underscores and --name-with-dashes
            for (char *p = name; *p; p++)
                if (*p == '_') *p = '-';
            for (int j = 0; j < n && !f; j++) {
                char fn[128];
                snprintf(fn, sizeof fn, "%s", flags[j].name);
                for (char *p = fn; *p; p++)
                    if (*p == '_') *p = '-';
                if (!strcmp(fn, name)) f = &flags[j];
            }
            if (eq) val = eq + 1;
        } else if (a[0] == '-' && a[1] && !a[2]) {
            for (int j = 0; j < n && !f; j++)
                if (flags[j].short_name == a[1]) f = &flags[j];
            snprintf(name, sizeof name, "%s", a);
        } else {
            fprintf(stderr, "error: unexpected argument '%s' (flags start with - or --; see -h)\n", a);
            return -1;
        }
        if (!f) {
            fprintf(stderr, "error: unknown flag '%s' (see -h for the list)\n", a);
            return -1;
        }
        if (!val) {
            if (f->type == FLAG_BOOL && (i + 1 >= argc || argv[i + 1][0] == '-')) {
                *(int *)f->dst = 1;
                f->set = 1;
                continue;
            }
            if (i + 1 >= argc) {
                fprintf(stderr, "error: flag '%s' needs a value\n", a);
                return -1;
            }
            val = argv[++i];
        }
        if (set_value(f, val) != 0) return -1;
    }
    return 0;
}

void flags_usage(const Flag *flags, int n, const char *prog, const char *intro, FILE *fp) {
    fprintf(fp, "usage: %s [flags]\n%s\n\nflags (--name value, --name=value; default in brackets):\n", prog, intro);
    for (int i = 0; i < n; i++) {
        char lhs[96];
        if (flags[i].short_name)
            snprintf(lhs, sizeof lhs, "  -%c, --%s", flags[i].short_name, flags[i].name);
        else
            snprintf(lhs, sizeof lhs, "      --%s", flags[i].name);
        fprintf(fp, "%-32s %s [%s]\n", lhs, flags[i].help, flags[i].deflt);
    }
}
