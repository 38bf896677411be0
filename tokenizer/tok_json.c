// Hugging Face tokenizer.json reading and writing (cJSON). See tokenizer.h for the subset
// we support; anything else is refused with a message naming the field and the file.
#include <cjson/cJSON.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "tok_internal.h"

static const cJSON *jget(const cJSON *obj, const char *key) { return cJSON_GetObjectItemCaseSensitive(obj, key); }
static int jnull(const cJSON *x) { return !x || cJSON_IsNull(x); }
// boolean field with default; -1 when present but not a boolean
static int jbool(const cJSON *obj, const char *key, int dflt) {
    const cJSON *x = jget(obj, key);
    if (jnull(x)) return dflt;
    if (!cJSON_IsBool(x)) return -1;
    return cJSON_IsTrue(x) ? 1 : 0;
}
static const char *jtype(const cJSON *obj) {
    const cJSON *t = jget(obj, "type");
    return cJSON_IsString(t) ? t->valuestring : NULL;
}
// integer id in [0, bound): 0 or -1
static int jid(const cJSON *x, int64_t bound, int32_t *out) {
    if (!cJSON_IsNumber(x)) return -1;
    double v = x->valuedouble;
    if (!(v >= 0) || v >= (double)bound || v != floor(v)) return -1;
    *out = (int32_t)v;
    return 0;
}

static int parse_step(Tokenizer *tok, const cJSON *js, const char *where, const char *name, MoeErr *err) {
    const char *type = jtype(js);
    if (!cJSON_IsObject(js) || !type)
        return moe_err_set(err, "%s: %s: expected an object with a \"type\"", name, where);
    TokStep st = {0};
    if (strcmp(type, "ByteLevel") == 0) {
        st.kind = TOK_STEP_BYTELEVEL;
        st.add_prefix_space = jbool(js, "add_prefix_space", 1);
        st.use_regex = jbool(js, "use_regex", 1);
        st.trim_offsets = jbool(js, "trim_offsets", 1);
        if (st.add_prefix_space < 0 || st.use_regex < 0 || st.trim_offsets < 0)
            return moe_err_set(err, "%s: %s (ByteLevel): add_prefix_space/use_regex/trim_offsets must be booleans", name,
                               where);
    } else if (strcmp(type, "Digits") == 0) {
        st.kind = TOK_STEP_DIGITS;
        st.individual_digits = jbool(js, "individual_digits", 0);
        if (st.individual_digits < 0) return moe_err_set(err, "%s: %s (Digits): individual_digits must be a boolean", name, where);
    } else if (strcmp(type, "Split") == 0) {
        st.kind = TOK_STEP_SPLIT;
        const cJSON *pat = jget(js, "pattern");
        const cJSON *re = cJSON_IsObject(pat) ? jget(pat, "Regex") : NULL;
        const cJSON *lit = cJSON_IsObject(pat) ? jget(pat, "String") : NULL;
        if (cJSON_IsString(re)) {
            st.is_regex = 1;
            st.pattern = strdup(re->valuestring);
        } else if (cJSON_IsString(lit)) {
            st.is_regex = 0;
            st.pattern = strdup(lit->valuestring);
        } else {
            return moe_err_set(err, "%s: %s (Split): pattern must be {\"Regex\": ...} or {\"String\": ...}", name, where);
        }
        if (!st.pattern) return moe_err_set(err, "%s: out of memory", name);
        const cJSON *beh = jget(js, "behavior");
        const char *b = cJSON_IsString(beh) ? beh->valuestring : "";
        if (strcmp(b, "Isolated") == 0) st.behavior = TOK_SPLIT_ISOLATED;
        else if (strcmp(b, "Removed") == 0) st.behavior = TOK_SPLIT_REMOVED;
        else if (strcmp(b, "MergedWithPrevious") == 0) st.behavior = TOK_SPLIT_MERGED_PREV;
        else if (strcmp(b, "MergedWithNext") == 0) st.behavior = TOK_SPLIT_MERGED_NEXT;
        else if (strcmp(b, "Contiguous") == 0) st.behavior = TOK_SPLIT_CONTIGUOUS;
        else {
            free(st.pattern);
            return moe_err_set(err, "%s: %s (Split): unsupported behavior '%.40s'", name, where, b);
        }
        st.invert = jbool(js, "invert", 0);
        if (st.invert < 0) {
            free(st.pattern);
            return moe_err_set(err, "%s: %s (Split): invert must be a boolean", name, where);
        }
    } else {
        return moe_err_set(err,
                           "%s: %s: unsupported pre-tokenizer type '%.60s' (supported: ByteLevel, Split, Digits, "
                           "Sequence of these)",
                           name, where, type);
    }
    TokStep *s = realloc(tok->steps, (size_t)(tok->n_steps + 1) * sizeof(TokStep));
    if (!s) {
        free(st.pattern);
        return moe_err_set(err, "%s: out of memory", name);
    }
    tok->steps = s;
    tok->steps[tok->n_steps++] = st;
    return tok_step_compile(&tok->steps[tok->n_steps - 1], name, err);
}

static int parse_pretok(Tokenizer *tok, const cJSON *pt, const char *name, MoeErr *err) {
    if (jnull(pt))
        return moe_err_set(err, "%s: pre_tokenizer is null: not a byte-level BPE (a ByteLevel pre-tokenizer is required)",
                           name);
    const char *type = jtype(pt);
    if (type && strcmp(type, "Sequence") == 0) {
        const cJSON *list = jget(pt, "pretokenizers");
        if (!cJSON_IsArray(list)) return moe_err_set(err, "%s: pre_tokenizer.pretokenizers: expected an array", name);
        int i = 0;
        const cJSON *it;
        cJSON_ArrayForEach(it, list) {
            char where[64];
            snprintf(where, sizeof(where), "pre_tokenizer.pretokenizers[%d]", i++);
            if (parse_step(tok, it, where, name, err) != 0) return -1;
        }
        tok->pretok_is_sequence = 1;
    } else {
        if (parse_step(tok, pt, "pre_tokenizer", name, err) != 0) return -1;
        tok->pretok_is_sequence = 0;
    }
    int bl = -1;
    for (int i = 0; i < tok->n_steps; i++)
        if (tok->steps[i].kind == TOK_STEP_BYTELEVEL) bl = i;
    if (bl < 0) return moe_err_set(err, "%s: pre_tokenizer has no ByteLevel step: not a byte-level BPE", name);
    if (bl != tok->n_steps - 1)
        return moe_err_set(err, "%s: pre_tokenizer: ByteLevel must be the last step (unsupported order)", name);
    // a short description, e.g. "Sequence[Split x5, Digits(individual), ByteLevel]"
    char *o = tok->pretok_name;
    size_t cap = sizeof(tok->pretok_name), len = 0;
    len += (size_t)snprintf(o + len, cap - len, "%s", tok->pretok_is_sequence ? "Sequence[" : "");
    for (int i = 0; i < tok->n_steps && len < cap; i++) {
        const TokStep *st = &tok->steps[i];
        int run = 1;
        if (st->kind == TOK_STEP_SPLIT)
            while (i + run < tok->n_steps && tok->steps[i + run].kind == TOK_STEP_SPLIT) run++;
        const char *sep = i ? ", " : "";
        if (st->kind == TOK_STEP_SPLIT && run > 1) len += (size_t)snprintf(o + len, cap - len, "%sSplit x%d", sep, run);
        else if (st->kind == TOK_STEP_SPLIT) len += (size_t)snprintf(o + len, cap - len, "%sSplit", sep);
        else if (st->kind == TOK_STEP_DIGITS)
            len += (size_t)snprintf(o + len, cap - len, "%sDigits%s", sep, st->individual_digits ? "(individual)" : "");
        else
            len += (size_t)snprintf(o + len, cap - len, "%sByteLevel%s%s", sep, st->use_regex ? "(gpt2 regex)" : "",
                                    st->add_prefix_space ? "(prefix space)" : "");
        i += run - 1;
    }
    if (tok->pretok_is_sequence && len < cap) snprintf(o + len, cap - len, "]");
    return 0;
}

static int check_normalizer(const cJSON *nz, const char *name, MoeErr *err) {
    if (jnull(nz)) return 0;
    const char *type = jtype(nz);
    if (type && strcmp(type, "Sequence") == 0) {
        const cJSON *list = jget(nz, "normalizers");
        if (cJSON_IsArray(list) && cJSON_GetArraySize(list) == 0) return 0;  // empty Sequence: a no-op
    }
    return moe_err_set(err, "%s: normalizer '%.60s' is not supported (only null or an empty Sequence)", name,
                       type ? type : "?");
}

static int dup_added(TokAdded *a, const char *s) {
    size_t n = strlen(s);
    a->content = malloc(n + 1);
    if (!a->content) return -1;
    memcpy(a->content, s, n + 1);
    a->len = (uint32_t)n;
    return 0;
}

Tokenizer *tokenizer_load_json(const char *json, size_t n, const char *name, MoeErr *err) {
    Tokenizer *tok = calloc(1, sizeof(Tokenizer));
    TokStrMap text_map = {0};
    if (!tok) {
        moe_err_set(err, "%s: out of memory", name);
        return NULL;
    }
    tok->unk_id = -1;
    tok->bos_id = tok->eos_id = tok->pad_id = -1;
    cJSON *root = cJSON_ParseWithLength(json, n);
    if (!root) {
        const char *at = cJSON_GetErrorPtr();
        size_t off = (at && at >= json && at <= json + n) ? (size_t)(at - json) : 0;
        moe_err_set(err, "%s: not valid JSON (error near byte %zu)", name, off);
        goto fail;
    }
    if (!cJSON_IsObject(root)) {
        moe_err_set(err, "%s: not a tokenizer.json (top level is not an object)", name);
        goto fail;
    }
    const cJSON *model = jget(root, "model");
    if (!cJSON_IsObject(model)) {
        moe_err_set(err, "%s: missing field \"model\"", name);
        goto fail;
    }
    const char *mtype = jtype(model);
    if (mtype && strcmp(mtype, "BPE") != 0) {
        moe_err_set(err, "%s: model.type '%.40s' is not supported (only byte-level BPE)", name, mtype);
        goto fail;
    }
    if (check_normalizer(jget(root, "normalizer"), name, err)) goto fail;
    {
        const cJSON *dec = jget(root, "decoder");
        const char *dt = jnull(dec) ? NULL : jtype(dec);
        if (!jnull(dec) && (!dt || strcmp(dt, "ByteLevel") != 0)) {
            moe_err_set(err, "%s: decoder '%.40s' is not supported (only ByteLevel or null)", name, dt ? dt : "?");
            goto fail;
        }
        const cJSON *pp = jget(root, "post_processor");
        if (!jnull(pp)) {
            const char *pt = jtype(pp);
            if (!pt || (strcmp(pt, "ByteLevel") && strcmp(pt, "TemplateProcessing") && strcmp(pt, "Sequence") &&
                        strcmp(pt, "RobertaProcessing") && strcmp(pt, "BertProcessing"))) {
                moe_err_set(err, "%s: post_processor '%.40s' is not supported", name, pt ? pt : "?");
                goto fail;
            }
            tok->post_processor_json = cJSON_PrintUnformatted(pp);  // kept to write back; not applied
        }
    }
    // model options
    {
        const cJSON *x = jget(model, "dropout");
        if (!jnull(x) && !(cJSON_IsNumber(x) && x->valuedouble == 0.0)) {
            moe_err_set(err, "%s: model.dropout is not supported (must be null)", name);
            goto fail;
        }
        const char *must_empty[] = {"continuing_subword_prefix", "end_of_word_suffix"};
        for (int i = 0; i < 2; i++) {
            x = jget(model, must_empty[i]);
            if (!jnull(x) && !(cJSON_IsString(x) && x->valuestring[0] == 0)) {
                moe_err_set(err, "%s: model.%s is not supported (must be null)", name, must_empty[i]);
                goto fail;
            }
        }
        int bf = jbool(model, "byte_fallback", 0);
        if (bf != 0) {
            moe_err_set(err, "%s: model.byte_fallback=true is not supported (not a byte-level BPE)", name);
            goto fail;
        }
        tok->fuse_unk = jbool(model, "fuse_unk", 0);
        tok->ignore_merges = jbool(model, "ignore_merges", 0);
        if (tok->fuse_unk < 0 || tok->ignore_merges < 0) {
            moe_err_set(err, "%s: model.fuse_unk / model.ignore_merges must be booleans", name);
            goto fail;
        }
    }
    const cJSON *vocab = jget(model, "vocab");
    const cJSON *merges = jget(model, "merges");
    const cJSON *added = jget(root, "added_tokens");
    if (!cJSON_IsObject(vocab)) {
        moe_err_set(err, "%s: missing or invalid field model.vocab (expected an object)", name);
        goto fail;
    }
    if (!cJSON_IsArray(merges)) {
        moe_err_set(err, "%s: missing or invalid field model.merges (expected an array)", name);
        goto fail;
    }
    if (!jnull(added) && !cJSON_IsArray(added)) {
        moe_err_set(err, "%s: added_tokens: expected an array", name);
        goto fail;
    }
    int n_vocab = cJSON_GetArraySize(vocab), n_add = jnull(added) ? 0 : cJSON_GetArraySize(added);
    int64_t bound = 2 * (int64_t)(n_vocab + n_add) + 1024;  // ids are dense in practice; refuse absurd ones
    int32_t max_id = -1;
    const cJSON *it;
    cJSON_ArrayForEach(it, vocab) {
        int32_t id;
        if (jid(it, bound, &id)) {
            moe_err_set(err, "%s: model.vocab[\"%.40s\"]: id is not an integer in [0, %lld)", name,
                        it->string ? it->string : "", (long long)bound);
            goto fail;
        }
        if (id > max_id) max_id = id;
    }
    if (n_add) {
        int i = 0;
        cJSON_ArrayForEach(it, added) {
            int32_t id;
            const cJSON *c = jget(it, "content");
            if (!cJSON_IsObject(it) || jid(jget(it, "id"), bound, &id) || !cJSON_IsString(c) || !c->valuestring[0]) {
                moe_err_set(err, "%s: added_tokens[%d]: needs an integer \"id\" and a non-empty string \"content\"", name,
                            i);
                goto fail;
            }
            if (id > max_id) max_id = id;
            i++;
        }
    }
    if (tok_alloc_vocab(tok, max_id + 1) != 0) {
        moe_err_set(err, "%s: out of memory", name);
        goto fail;
    }
    cJSON_ArrayForEach(it, vocab) {
        int32_t id = (int32_t)it->valuedouble;
        if (tok->tok_text[id]) {
            moe_err_set(err, "%s: model.vocab: id %d is used by two tokens", name, (int)id);
            goto fail;
        }
        if (tok_set_token_text(tok, id, it->string, strlen(it->string)) != 0) {
            moe_err_set(err, "%s: out of memory", name);
            goto fail;
        }
        tok->in_model[id] = 1;
    }
    // text -> id for merges
    if (tok_strmap_init(&text_map, (size_t)n_vocab) != 0) {
        moe_err_set(err, "%s: out of memory", name);
        goto fail;
    }
    for (int32_t id = 0; id < tok->vocab_size; id++)
        if (tok->in_model[id] && tok_strmap_put(&text_map, tok->tok_text[id], strlen(tok->tok_text[id]), id) != 0) {
            moe_err_set(err, "%s: out of memory", name);
            goto fail;
        }
    {
        const cJSON *unk = jget(model, "unk_token");
        if (cJSON_IsString(unk)) {
            tok->unk_id = tok_strmap_get(&text_map, unk->valuestring, strlen(unk->valuestring));
            if (tok->unk_id < 0) {
                moe_err_set(err, "%s: model.unk_token '%.40s' is not in model.vocab", name, unk->valuestring);
                goto fail;
            }
        } else if (!jnull(unk)) {
            moe_err_set(err, "%s: model.unk_token must be a string or null", name);
            goto fail;
        }
    }
    int n_merges = cJSON_GetArraySize(merges);
    tok->merges = malloc((size_t)(n_merges > 0 ? n_merges : 1) * sizeof(*tok->merges));
    if (!tok->merges) {
        moe_err_set(err, "%s: out of memory", name);
        goto fail;
    }
    {
        int r = 0;
        char *buf = NULL;
        size_t buf_cap = 0;
        cJSON_ArrayForEach(it, merges) {
            const char *a, *b;
            size_t la, lb;
            if (cJSON_IsString(it)) {
                const char *s = it->valuestring, *sp = strchr(s, ' ');
                if (!sp || strchr(sp + 1, ' ')) {
                    free(buf);
                    moe_err_set(err, "%s: model.merges[%d]: '%.60s' is not two tokens separated by one space", name, r, s);
                    goto fail;
                }
                a = s;
                la = (size_t)(sp - s);
                b = sp + 1;
                lb = strlen(b);
            } else if (cJSON_IsArray(it) && cJSON_GetArraySize(it) == 2 && cJSON_IsString(cJSON_GetArrayItem(it, 0)) &&
                       cJSON_IsString(cJSON_GetArrayItem(it, 1))) {
                a = cJSON_GetArrayItem(it, 0)->valuestring;
                b = cJSON_GetArrayItem(it, 1)->valuestring;
                la = strlen(a);
                lb = strlen(b);
            } else {
                free(buf);
                moe_err_set(err, "%s: model.merges[%d]: expected \"a b\" or [\"a\", \"b\"]", name, r);
                goto fail;
            }
            if (la + lb + 1 > buf_cap) {
                buf_cap = 2 * (la + lb + 1);
                char *nb = realloc(buf, buf_cap);
                if (!nb) {
                    free(buf);
                    moe_err_set(err, "%s: out of memory", name);
                    goto fail;
                }
                buf = nb;
            }
            memcpy(buf, a, la);
            memcpy(buf + la, b, lb);
            int32_t ia = tok_strmap_get(&text_map, a, la), ib = tok_strmap_get(&text_map, b, lb);
            int32_t ic = tok_strmap_get(&text_map, buf, la + lb);
            if (ia < 0 || ib < 0 || ic < 0) {
                const char *which = ia < 0 ? a : ib < 0 ? b : buf;
                int wl = (int)(ia < 0 ? la : ib < 0 ? lb : la + lb);
                moe_err_set(err, "%s: model.merges[%d]: token '%.*s' is not in model.vocab", name, r, wl > 60 ? 60 : wl,
                            which);
                free(buf);
                goto fail;
            }
            tok->merges[r][0] = ia;
            tok->merges[r][1] = ib;
            tok->merges[r][2] = ic;
            r++;
        }
        free(buf);
        tok->n_merges = r;
    }
    if (n_add) {
        tok->added = calloc((size_t)n_add, sizeof(TokAdded));
        if (!tok->added) {
            moe_err_set(err, "%s: out of memory", name);
            goto fail;
        }
        cJSON_ArrayForEach(it, added) {
            TokAdded *a = &tok->added[tok->n_added];
            a->id = (int32_t)jget(it, "id")->valuedouble;
            if (dup_added(a, jget(it, "content")->valuestring) != 0) {
                moe_err_set(err, "%s: out of memory", name);
                goto fail;
            }
            tok->n_added++;
            a->special = jbool(it, "special", 0);
            a->single_word = jbool(it, "single_word", 0);
            a->lstrip = jbool(it, "lstrip", 0);
            a->rstrip = jbool(it, "rstrip", 0);
            a->normalized = jbool(it, "normalized", 0);
            if (a->special < 0 || a->single_word < 0 || a->lstrip < 0 || a->rstrip < 0 || a->normalized < 0) {
                moe_err_set(err, "%s: added_tokens[%d]: special/single_word/lstrip/rstrip/normalized must be booleans",
                            name, tok->n_added - 1);
                goto fail;
            }
            // an added token decodes to its content exactly
            if (tok_set_token_text(tok, a->id, a->content, a->len) != 0) {
                moe_err_set(err, "%s: out of memory", name);
                goto fail;
            }
            memcpy(tok->tok_bytes[a->id], a->content, a->len);
            tok->tok_len[a->id] = a->len;
        }
    }
    if (parse_pretok(tok, jget(root, "pre_tokenizer"), name, err) != 0) goto fail;
    if (tok_finalize(tok, name, err) != 0) goto fail;
    tok_strmap_free(&text_map);
    cJSON_Delete(root);
    return tok;
fail:
    tok_strmap_free(&text_map);
    cJSON_Delete(root);
    tokenizer_free(tok);
    return NULL;
}

// HF keeps bos/eos/pad in tokenizer_config.json beside tokenizer.json: when that file exists,
// its bos_token / eos_token / pad_token (a string, {"content": ...} or null) override the ids
// guessed from the added tokens' names.
static int apply_tokenizer_config(Tokenizer *tok, const char *path, MoeErr *err) {
    char cfg[4096];
    const char *slash = strrchr(path, '/');
    int dl = slash ? (int)(slash - path) : 0;
    if (snprintf(cfg, sizeof(cfg), "%.*s%stokenizer_config.json", dl, path, slash ? "/" : "") >= (int)sizeof(cfg))
        return 0;
    if (!file_exists(cfg)) return 0;
    char *data = NULL;
    size_t n = 0;
    if (read_file_all(cfg, &data, &n, err) != 0) return -1;
    cJSON *root = cJSON_ParseWithLength(data, n);
    free(data);
    if (!cJSON_IsObject(root)) {
        cJSON_Delete(root);
        return moe_err_set(err, "%s: not a JSON object (read for bos/eos/pad beside %s)", cfg, path);
    }
    const char *keys[3] = {"bos_token", "eos_token", "pad_token"};
    int *ids[3] = {&tok->bos_id, &tok->eos_id, &tok->pad_id};
    for (int k = 0; k < 3; k++) {
        const cJSON *it = jget(root, keys[k]);
        if (!it) continue;
        if (cJSON_IsNull(it)) {
            *ids[k] = -1;
            continue;
        }
        if (cJSON_IsObject(it)) it = jget(it, "content");
        if (!cJSON_IsString(it)) continue;
        int32_t id = tokenizer_token_id(tok, it->valuestring, strlen(it->valuestring));
        if (id >= 0) *ids[k] = id;
    }
    cJSON_Delete(root);
    return 0;
}

Tokenizer *tokenizer_load(const char *path, MoeErr *err) {
    char *data = NULL;
    size_t n = 0;
    if (read_file_all(path, &data, &n, err) != 0) return NULL;
    if (n == 0) {
        free(data);
        moe_err_set(err, "%s: empty file (expected a tokenizer.json)", path);
        return NULL;
    }
    Tokenizer *tok = tokenizer_load_json(data, n, path, err);
    free(data);
    if (tok && apply_tokenizer_config(tok, path, err) != 0) {
        tokenizer_free(tok);
        return NULL;
    }
    return tok;
}

// ---------------------------------------------------------------------------------------
// Writing

static const char *behavior_name(TokSplitBehavior b) {
    switch (b) {
    case TOK_SPLIT_ISOLATED: return "Isolated";
    case TOK_SPLIT_REMOVED: return "Removed";
    case TOK_SPLIT_MERGED_PREV: return "MergedWithPrevious";
    case TOK_SPLIT_MERGED_NEXT: return "MergedWithNext";
    case TOK_SPLIT_CONTIGUOUS: return "Contiguous";
    }
    return "Isolated";
}

static cJSON *step_json(const TokStep *st) {
    cJSON *o = cJSON_CreateObject();
    if (!o) return NULL;
    if (st->kind == TOK_STEP_BYTELEVEL) {
        cJSON_AddStringToObject(o, "type", "ByteLevel");
        cJSON_AddBoolToObject(o, "add_prefix_space", st->add_prefix_space);
        cJSON_AddBoolToObject(o, "trim_offsets", st->trim_offsets);
        cJSON_AddBoolToObject(o, "use_regex", st->use_regex);
    } else if (st->kind == TOK_STEP_DIGITS) {
        cJSON_AddStringToObject(o, "type", "Digits");
        cJSON_AddBoolToObject(o, "individual_digits", st->individual_digits);
    } else {
        cJSON_AddStringToObject(o, "type", "Split");
        cJSON *p = cJSON_AddObjectToObject(o, "pattern");
        if (p) cJSON_AddStringToObject(p, st->is_regex ? "Regex" : "String", st->pattern);
        cJSON_AddStringToObject(o, "behavior", behavior_name(st->behavior));
        cJSON_AddBoolToObject(o, "invert", st->invert);
    }
    return o;
}

char *tokenizer_to_json(const Tokenizer *tok, MoeErr *err) {
    cJSON *root = cJSON_CreateObject();
    if (!root) goto oom;
    cJSON_AddStringToObject(root, "version", "1.0");
    cJSON_AddNullToObject(root, "truncation");
    cJSON_AddNullToObject(root, "padding");
    cJSON *added = cJSON_AddArrayToObject(root, "added_tokens");
    if (!added) goto oom;
    // by id
    for (int32_t id = 0; id < tok->vocab_size; id++) {
        if (!tok->is_added[id]) continue;
        const TokAdded *a = NULL;
        for (int k = 0; k < tok->n_added; k++)
            if (tok->added[k].id == id) a = &tok->added[k];
        if (!a) continue;
        cJSON *o = cJSON_CreateObject();
        if (!o) goto oom;
        cJSON_AddItemToArray(added, o);
        cJSON_AddNumberToObject(o, "id", id);
        cJSON_AddStringToObject(o, "content", a->content);
        cJSON_AddBoolToObject(o, "single_word", a->single_word);
        cJSON_AddBoolToObject(o, "lstrip", a->lstrip);
        cJSON_AddBoolToObject(o, "rstrip", a->rstrip);
        cJSON_AddBoolToObject(o, "normalized", a->normalized);
        cJSON_AddBoolToObject(o, "special", a->special);
    }
    cJSON_AddNullToObject(root, "normalizer");
    cJSON *pt;
    if (tok->pretok_is_sequence || tok->n_steps != 1) {
        pt = cJSON_AddObjectToObject(root, "pre_tokenizer");
        if (!pt) goto oom;
        cJSON_AddStringToObject(pt, "type", "Sequence");
        cJSON *list = cJSON_AddArrayToObject(pt, "pretokenizers");
        if (!list) goto oom;
        for (int i = 0; i < tok->n_steps; i++) {
            cJSON *s = step_json(&tok->steps[i]);
            if (!s) goto oom;
            cJSON_AddItemToArray(list, s);
        }
    } else {
        pt = step_json(&tok->steps[0]);
        if (!pt) goto oom;
        cJSON_AddItemToObject(root, "pre_tokenizer", pt);
    }
    if (tok->post_processor_json) {
        cJSON *pp = cJSON_Parse(tok->post_processor_json);
        if (!pp) goto oom;
        cJSON_AddItemToObject(root, "post_processor", pp);
    } else {
        cJSON_AddNullToObject(root, "post_processor");
    }
    cJSON *dec = cJSON_AddObjectToObject(root, "decoder");
    if (!dec) goto oom;
    cJSON_AddStringToObject(dec, "type", "ByteLevel");
    cJSON_AddBoolToObject(dec, "add_prefix_space", 1);
    cJSON_AddBoolToObject(dec, "trim_offsets", 1);
    cJSON_AddBoolToObject(dec, "use_regex", 1);
    cJSON *model = cJSON_AddObjectToObject(root, "model");
    if (!model) goto oom;
    cJSON_AddStringToObject(model, "type", "BPE");
    cJSON_AddNullToObject(model, "dropout");
    if (tok->unk_id >= 0) cJSON_AddStringToObject(model, "unk_token", tok->tok_text[tok->unk_id]);
    else cJSON_AddNullToObject(model, "unk_token");
    cJSON_AddNullToObject(model, "continuing_subword_prefix");
    cJSON_AddNullToObject(model, "end_of_word_suffix");
    cJSON_AddBoolToObject(model, "fuse_unk", tok->fuse_unk);
    cJSON_AddBoolToObject(model, "byte_fallback", 0);
    cJSON_AddBoolToObject(model, "ignore_merges", tok->ignore_merges);
    cJSON *vocab = cJSON_AddObjectToObject(model, "vocab");
    if (!vocab) goto oom;
    for (int32_t id = 0; id < tok->vocab_size; id++) {
        if (!tok->in_model[id]) continue;
        cJSON *num = cJSON_CreateNumber(id);
        if (!num) goto oom;
        cJSON_AddItemToObject(vocab, tok->tok_text[id], num);
    }
    cJSON *merges = cJSON_AddArrayToObject(model, "merges");
    if (!merges) goto oom;
    for (int32_t r = 0; r < tok->n_merges; r++) {
        const char *pair[2] = {tok->tok_text[tok->merges[r][0]], tok->tok_text[tok->merges[r][1]]};
        cJSON *arr = cJSON_CreateStringArray(pair, 2);
        if (!arr) goto oom;
        cJSON_AddItemToArray(merges, arr);
    }
    char *out = cJSON_Print(root);
    cJSON_Delete(root);
    if (!out) moe_err_set(err, "tokenizer: out of memory writing tokenizer.json");
    return out;
oom:
    cJSON_Delete(root);
    moe_err_set(err, "tokenizer: out of memory writing tokenizer.json");
    return NULL;
}

int tokenizer_save(const Tokenizer *tok, const char *path, MoeErr *err) {
    char *json = tokenizer_to_json(tok, err);
    if (!json) return -1;
    int rc = write_file_atomic(path, json, strlen(json), err);
    free(json);
    return rc;
}
