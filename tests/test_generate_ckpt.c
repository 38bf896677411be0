// Generation from a checkpoint: a tiny model saved with ckpt_save and loaded the way
// `sample` loads it (ckpt_read_header, model_init, ckpt_load without the optimizer) decodes
// to the same logits and the same tokens as the model that was saved.
//
// Also the helper of tests/test_sample.sh:
//   test_generate_ckpt --make CKPT TOKENIZER [VOCAB]   train a tiny tokenizer, save it and a
//       tiny model with random weights of its vocabulary (or of VOCAB tokens)
#include <math.h>
#include <unistd.h>

#include "../model/generate.h"
#include "../tokenizer/tokenizer.h"
#include "../train/checkpoint.h"
#include "test.h"

static const char *const kTexts[] = {
    "In the beginning God created the heaven and the earth.",
    "And the earth was without form, and void; and darkness was upon the face of the deep.",
    "And God said, Let there be light: and there was light.",
    "And God saw the light, that it was good: and God divided the light from the darkness.",
};

static void randomize(Model *m, uint64_t seed) {
    uint64_t rng = rng_seed(seed);
    for (int ti = 0; ti < m->n_tensors; ti++) {
        const TensorInfo *t = &m->tensors[ti];
        float *p = m->params + t->offset;
        float std = t->ndim == 1 ? 0.0f : (ti == 0 ? 1.0f : 1.5f / sqrtf((float)t->shape[t->ndim - 1]));
        for (size_t j = 0; j < t->numel; j++) p[j] = t->ndim == 1 ? 1.0f + 0.2f * rng_normal(&rng) : std * rng_normal(&rng);
    }
    for (int i = 0; i < m->n_blocks * m->cfg.n_routed_experts; i++) m->bias[i] = 0.05f * rng_normal(&rng);
}

static void train_state(CkptTrainState *st) {
    memset(st, 0, sizeof(*st));
    st->step = 7;
    st->best_val_loss = INFINITY;
    st->loss_scale = 1.0f;
    snprintf(st->run_name, sizeof st->run_name, "gen-test");
}

static int make_files(const char *ckpt, const char *tok_path, int vocab) {
    MoeErr err;
    TokTrainConfig tc;
    tok_train_config_default(&tc);
    tc.vocab_size = 300;
    size_t n = sizeof(kTexts) / sizeof(kTexts[0]), lens[4];
    for (size_t i = 0; i < n; i++) lens[i] = strlen(kTexts[i]);
    Tokenizer *tok = tokenizer_train(kTexts, lens, n, &tc, &err);
    if (!tok || tokenizer_save(tok, tok_path, &err) != 0) {
        fprintf(stderr, "error: tokenizer: %s\n", err.msg);
        return 1;
    }
    ModelConfig cfg;
    config_tiny(&cfg);
    cfg.vocab_size = vocab > 0 ? vocab : tokenizer_vocab_size(tok);
    cfg.max_seq_len = 48;
    tokenizer_free(tok);
    Model m;
    if (model_init(&m, &cfg, 1, 1, 3, &err) != 0) {
        fprintf(stderr, "error: model_init: %s\n", err.msg);
        return 1;
    }
    randomize(&m, 4);
    CkptTrainState st;
    train_state(&st);
    int rc = ckpt_save(ckpt, &m, &st, &err);
    if (rc != 0) fprintf(stderr, "error: ckpt_save: %s\n", err.msg);
    model_free(&m);
    return rc ? 1 : 0;
}

static void check_roundtrip(void) {
    test_begin("checkpoint -> generation gives the saved model's logits and tokens");
    char dir[] = "/tmp/moe_gen_ckpt_XXXXXX";
    if (!mkdtemp(dir)) {
        CHECK(0, "mkdtemp failed");
        test_end();
        return;
    }
    char path[256];
    snprintf(path, sizeof path, "%s/tiny.ckpt", dir);
    MoeErr err;
    ModelConfig cfg;
    config_tiny(&cfg);
    Model a, b;
    CHECK(model_init(&a, &cfg, 1, 1, 1, &err) == 0, "model_init: %s", err.msg);
    randomize(&a, 2);
    CkptTrainState st;
    train_state(&st);
    CHECK(ckpt_save(path, &a, &st, &err) == 0, "ckpt_save: %s", err.msg);
    // the loading sequence of `sample`
    ModelConfig c2;
    CkptTrainState st2;
    CHECK(ckpt_read_header(path, &c2, &st2, &err) == 0, "ckpt_read_header: %s", err.msg);
    CHECK(model_init(&b, &c2, 1, 1, 99, &err) == 0, "model_init: %s", err.msg);
    CHECK(ckpt_load(path, &b, &st2, 0, &err) == 0, "ckpt_load: %s", err.msg);
    Generator ga, gb;
    CHECK(gen_init(&ga, &a, cfg.max_seq_len, &err) == 0, "gen_init: %s", err.msg);
    CHECK(gen_init(&gb, &b, cfg.max_seq_len, &err) == 0, "gen_init: %s", err.msg);
    int prompt[2] = {5, 6}, oa[16], ob[16];
    SampleOpts o = {0.9f, 10, 0.9f};
    int na = gen_generate(&ga, prompt, 2, 10, &o, 77, oa, NULL, NULL, &err);
    int nb = gen_generate(&gb, prompt, 2, 10, &o, 77, ob, NULL, NULL, &err);
    CHECK(na == 10 && nb == 10, "generated %d and %d tokens", na, nb);
    CHECK(memcmp(oa, ob, sizeof(int) * 10) == 0, "loaded model generates other tokens");
    CHECK(memcmp(ga.logits, gb.logits, sizeof(float) * (size_t)cfg.vocab_size) == 0, "logits differ after loading");
    gen_free(&ga);
    gen_free(&gb);
    model_free(&a);
    model_free(&b);
    unlink(path);
    rmdir(dir);
    test_end();
}

int main(int argc, char **argv) {
    if ((argc == 4 || argc == 5) && !strcmp(argv[1], "--make"))
        return make_files(argv[2], argv[3], argc == 5 ? atoi(argv[4]) : 0);
    if (argc != 1) {
        fprintf(stderr, "usage: test_generate_ckpt [--make CKPT TOKENIZER [VOCAB]]\n");
        return 2;
    }
    check_roundtrip();
    return test_summary();
}
