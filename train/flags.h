// Command-line flags: a table of named options (long name, optional short letter), each
// with a type, a destination and a help line; usage prints every flag with its default.
#ifndef MOE_FLAGS_H
#define MOE_FLAGS_H

#include <stdio.h>

typedef enum { FLAG_INT, FLAG_FLOAT, FLAG_STR, FLAG_BOOL, FLAG_U64 } FlagType;

typedef struct {
    const char *name;   // long name without the leading "--"
    char short_name;    // 0 when none
    FlagType type;
    void *dst;          // int*, float*, char[FLAG_STR_LEN], int* (bool), uint64_t*
    const char *help;
    int is_shape;       // a model field whose change changes a tensor's shape
    int set;            // set on the command line
    char deflt[64];     // default, as printed (filled by flags_snapshot_defaults)
} Flag;

#define FLAG_STR_LEN 1024

// Record the current values as defaults (call before parsing).
void flags_snapshot_defaults(Flag *flags, int n);
// Parse argv; on error prints one line to stderr and returns -1. "-h"/"--help" returns 1.
int flags_parse(Flag *flags, int n, int argc, char **argv);
void flags_usage(const Flag *flags, int n, const char *prog, const char *intro, FILE *fp);
Flag *flags_find(Flag *flags, int n, const char *name);

#endif
