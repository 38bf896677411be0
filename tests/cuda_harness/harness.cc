// CUDA-on-CPU harness: the scheduler (blocks in sequence, threads as ucontext fibers), the
// block barrier, warp operations (also the warp-collective checks of the WMMA model, wmma.h),
// shared memory, and the subset of the CUDA runtime API the project uses (device memory = host
// memory). See cuda_harness.h for the model.
#include "cuda_harness.h"

#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <signal.h>
#include <sys/mman.h>
#include <ucontext.h>
#include <unistd.h>

#if defined(__SANITIZE_ADDRESS__)
#include <sanitizer/asan_interface.h>
#include <sanitizer/common_interface_defs.h>
#define HX_ASAN 1
#define HX_STACK_BYTES (128 * 1024)  // ASan frames are larger
#else
#define HX_STACK_BYTES (64 * 1024)
#endif
#define HX_MAX_THREADS 1024
#define HX_MAX_SHARED (48 * 1024)  // static and dynamic shared memory per block, without opt-in
#define HX_MAX_KEYS 64

thread_local MoeHxThreadState moe_hx_state;

enum { T_READY = 0, T_WAIT_BLOCK, T_WAIT_WARP, T_DONE, T_FAILED };

typedef struct {
    ucontext_t ctx;
    char *stack;  // HX_STACK_BYTES usable, a PROT_NONE guard page below
    int state;
    uint3 tid;
    int linear, lane, warp;
    // the warp operation it waits in
    int op;
    unsigned mask;
    uint64_t value, result;
    int arg, width;
    const char *file;
    int line;
    void *fake_stack;
} HxThread;

typedef struct {
    int arrived;
    unsigned mask;
    int op;
    const char *file;
    int line;
    // the arguments of a wmma operation (the same in every lane)
    uint64_t value;
    int arg;
} HxWarp;

typedef struct {
    const void *key;
    void *mem;   // what the kernel sees
    void *base;  // the allocation
    size_t bytes, total;
} HxShared;

static struct {
    HxThread *threads;  // HX_MAX_THREADS, stacks allocated on first use
    int n_stacks;
    int nthreads, nwarps, ndone;
    HxWarp warps[HX_MAX_THREADS / 32];
    // block barrier
    int barrived;
    const char *bfile;
    int bline;
    // launch
    int active;
    const char *kernel, *lfile;
    int lline;
    MoeHxFn fn;
    void *arg;
    int cur;
    ucontext_t sched;
    void *sched_fake;
    const void *sched_bottom;
    size_t sched_size;
    // shared memory of the running block
    HxShared shared[HX_MAX_KEYS];
    int nshared;
    size_t shared_total;
    char *dyn, *dyn_base;
    size_t dyn_bytes, dyn_total;
    // errors
    int record;
    int failed;
    char err[1024];
    long launches, switches;
} H;

static const char *op_name(int op) {
    switch (op) {
        case MOE_HX_OP_SYNCWARP: return "__syncwarp";
        case MOE_HX_OP_SHFL: return "__shfl_sync";
        case MOE_HX_OP_SHFL_XOR: return "__shfl_xor_sync";
        case MOE_HX_OP_SHFL_DOWN: return "__shfl_down_sync";
        case MOE_HX_OP_SHFL_UP: return "__shfl_up_sync";
        case MOE_HX_OP_BALLOT: return "__ballot_sync";
        case MOE_HX_OP_WMMA_FILL: return "wmma::fill_fragment";
        case MOE_HX_OP_WMMA_LOAD_A: return "wmma::load_matrix_sync (matrix_a)";
        case MOE_HX_OP_WMMA_LOAD_B: return "wmma::load_matrix_sync (matrix_b)";
        case MOE_HX_OP_WMMA_LOAD_C: return "wmma::load_matrix_sync (accumulator)";
        case MOE_HX_OP_WMMA_MMA: return "wmma::mma_sync";
        case MOE_HX_OP_WMMA_STORE: return "wmma::store_matrix_sync";
    }
    return "?";
}

// ---------------------------------------------------------------------------------------
// fiber switching

static void hx_to_scheduler(HxThread *t, int dying) {
    H.switches++;
#ifdef HX_ASAN
    __sanitizer_start_switch_fiber(dying ? NULL : &t->fake_stack, H.sched_bottom, H.sched_size);
#else
    (void)dying;
#endif
    swapcontext(&t->ctx, &H.sched);
#ifdef HX_ASAN
    __sanitizer_finish_switch_fiber(t->fake_stack, NULL, NULL);
#endif
}

static void hx_run(int i) {
    HxThread *t = &H.threads[i];
    H.cur = i;
    moe_hx_state.tid = t->tid;
    H.switches++;
#ifdef HX_ASAN
    __sanitizer_start_switch_fiber(&H.sched_fake, t->stack, HX_STACK_BYTES);
#endif
    swapcontext(&H.sched, &t->ctx);
#ifdef HX_ASAN
    __sanitizer_finish_switch_fiber(H.sched_fake, NULL, NULL);
#endif
}

// Report an error of the running launch. In abort mode it never returns. In record mode a
// fiber parks itself (never resumed) and the scheduler ends the launch.
static void hx_fail(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
static void hx_fail(const char *fmt, ...) {
    char msg[768];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof msg, fmt, ap);
    va_end(ap);
    if (H.active)
        snprintf(H.err, sizeof H.err, "cuda harness: kernel %s (launched at %s:%d), block (%u,%u,%u): %s", H.kernel,
                 H.lfile, H.lline, moe_hx_state.bid.x, moe_hx_state.bid.y, moe_hx_state.bid.z, msg);
    else
        snprintf(H.err, sizeof H.err, "cuda harness: %s", msg);
    if (!H.record) {
        fprintf(stderr, "%s\n", H.err);
        fflush(stdout);
        abort();
    }
    H.failed = 1;
}

static HxThread *hx_self(const char *what, const char *file, int line) {
    if (!H.active) {
        hx_fail("%s at %s:%d called outside a kernel", what, file, line);
        return NULL;
    }
    return &H.threads[H.cur];
}

// park a fiber after a recorded error
static void hx_park(HxThread *t) {
    t->state = T_FAILED;
    for (;;) hx_to_scheduler(t, 0);
}

// an error found by the device-side models of cuda_harness.h / wmma.h (bad wmma alignment,
// bad ldm): reported like the scheduler's own errors; the calling thread never returns
void moe_hx_kernel_error(const char *file, int line, const char *fmt, ...) {
    char msg[600];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof msg, fmt, ap);
    va_end(ap);
    HxThread *t = hx_self("a device operation", file, line);
    if (!t) {
        hx_fail("%s at %s:%d", msg, file, line);
        return;
    }
    hx_fail("thread (%u,%u,%u) at %s:%d: %s", t->tid.x, t->tid.y, t->tid.z, file, line, msg);
    hx_park(t);
}

static void hx_check_exit(HxThread *t) {
    if (H.barrived > 0)
        hx_fail("thread (%u,%u,%u) exited while %d threads wait at __syncthreads at %s:%d (divergent barrier)",
                t->tid.x, t->tid.y, t->tid.z, H.barrived, H.bfile, H.bline);
    HxWarp *w = &H.warps[t->warp];
    if (!H.failed && w->arrived > 0 && (w->mask >> t->lane & 1u))
        hx_fail("lane %d of warp %d exited while %d lanes wait for it in %s at %s:%d", t->lane, t->warp, w->arrived,
                op_name(w->op), w->file, w->line);
}

static void hx_entry(void) {
#ifdef HX_ASAN
    __sanitizer_finish_switch_fiber(NULL, &H.sched_bottom, &H.sched_size);
#endif
    H.fn(H.arg);
    HxThread *t = &H.threads[H.cur];
    hx_check_exit(t);
    t->state = H.failed ? T_FAILED : T_DONE;
    H.ndone++;
    for (;;) hx_to_scheduler(t, 1);
}

// ---------------------------------------------------------------------------------------
// barriers and warp operations

void moe_hx_syncthreads(const char *file, int line) {
    HxThread *t = hx_self("__syncthreads", file, line);
    if (!t) return;
    if (H.ndone > 0) {
        hx_fail("thread (%u,%u,%u) waits at __syncthreads at %s:%d but %d threads of the block have exited "
                "(divergent barrier)", t->tid.x, t->tid.y, t->tid.z, file, line, H.ndone);
        hx_park(t);
    }
    if (H.barrived == 0) {
        H.bfile = file;
        H.bline = line;
    } else if (H.bline != line || strcmp(H.bfile, file) != 0) {
        hx_fail("divergent __syncthreads: thread (%u,%u,%u) at %s:%d while %d threads wait at %s:%d", t->tid.x,
                t->tid.y, t->tid.z, file, line, H.barrived, H.bfile, H.bline);
        hx_park(t);
    }
    H.barrived++;
    if (H.barrived == H.nthreads) {  // the last one releases the others and runs on
        H.barrived = 0;
        for (int i = 0; i < H.nthreads; i++)
            if (H.threads[i].state == T_WAIT_BLOCK) H.threads[i].state = T_READY;
        return;
    }
    t->state = T_WAIT_BLOCK;
    hx_to_scheduler(t, 0);
}

unsigned moe_hx_activemask(void) {
    HxThread *t = hx_self("__activemask", "?", 0);
    if (!t) return 0;
    unsigned m = 0;
    for (int l = 0; l < 32; l++) {
        int i = t->warp * 32 + l;
        if (i < H.nthreads && H.threads[i].state != T_DONE) m |= 1u << l;
    }
    return m;
}

static int hx_src_lane(const HxThread *u) {
    int lane = u->lane, w = u->width, base = lane & ~(w - 1), src = lane;
    switch (u->op) {
        case MOE_HX_OP_SHFL: src = base + (u->arg & (w - 1)); break;
        case MOE_HX_OP_SHFL_XOR: src = lane ^ u->arg; if (src >= base + w) src = lane; break;
        case MOE_HX_OP_SHFL_DOWN: src = lane + u->arg; if (src >= base + w) src = lane; break;
        case MOE_HX_OP_SHFL_UP: src = lane - u->arg; if (src < base) src = lane; break;
    }
    return src;
}

uint64_t moe_hx_warp_op(int op, unsigned mask, uint64_t value, int arg, int width, const char *file, int line) {
    HxThread *t = hx_self(op_name(op), file, line);
    if (!t) return 0;
    HxWarp *w = &H.warps[t->warp];
    int nl = H.nthreads - t->warp * 32;
    unsigned exists = nl >= 32 ? 0xffffffffu : ((1u << nl) - 1u);
    if (width < 1 || width > 32 || (width & (width - 1)) != 0) {
        hx_fail("%s at %s:%d: width %d is not a power of two in 1..32", op_name(op), file, line, width);
        hx_park(t);
    }
    if (!(mask >> t->lane & 1u)) {
        hx_fail("lane %d of warp %d calls %s at %s:%d with mask 0x%08x that does not name it", t->lane, t->warp,
                op_name(op), file, line, mask);
        hx_park(t);
    }
    if (mask & ~exists) {
        hx_fail("%s at %s:%d: mask 0x%08x names lanes that do not exist (warp %d has %d lanes, block of %d threads)",
                op_name(op), file, line, mask, t->warp, nl < 32 ? nl : 32, H.nthreads);
        hx_park(t);
    }
    for (int l = 0; l < 32; l++) {
        if (!(mask >> l & 1u)) continue;
        if (H.threads[t->warp * 32 + l].state == T_DONE) {
            hx_fail("%s at %s:%d: mask 0x%08x names lane %d of warp %d, which has exited", op_name(op), file, line,
                    mask, l, t->warp);
            hx_park(t);
        }
    }
    int wmma = op >= MOE_HX_OP_WMMA_FILL;
    if (wmma && mask != 0xffffffffu) {
        hx_fail("%s at %s:%d: mask 0x%08x (wmma operations take the whole warp)", op_name(op), file, line, mask);
        hx_park(t);
    }
    if (w->arrived == 0) {
        w->mask = mask;
        w->op = op;
        w->file = file;
        w->line = line;
        w->value = value;
        w->arg = arg;
    } else if (w->mask != mask || w->op != op || (wmma && (w->line != line || strcmp(w->file, file) != 0))) {
        hx_fail("divergent warp operations in warp %d: lane %d calls %s (mask 0x%08x) at %s:%d while %d lanes wait in "
                "%s (mask 0x%08x) at %s:%d", t->warp, t->lane, op_name(op), mask, file, line, w->arrived,
                op_name(w->op), w->mask, w->file, w->line);
        hx_park(t);
    } else if (wmma && (w->value != value || w->arg != arg)) {
        hx_fail("%s at %s:%d: lane %d passes (0x%llx, %d) while %d lanes passed (0x%llx, %d): the pointer, ldm, "
                "layout and fill value of a wmma operation must be the same in every lane", op_name(op), file, line,
                t->lane, (unsigned long long)value, arg, w->arrived, (unsigned long long)w->value, w->arg);
        hx_park(t);
    }
    t->op = op;
    t->mask = mask;
    t->value = value;
    t->arg = arg;
    t->width = width;
    t->file = file;
    t->line = line;
    w->arrived++;
    if (w->arrived < __builtin_popcount(mask)) {
        t->state = T_WAIT_WARP;
        hx_to_scheduler(t, 0);
        return t->result;
    }
    // every lane of the mask is here: compute all results, release
    uint64_t ballot = 0;
    for (int l = 0; l < 32; l++)
        if (mask >> l & 1u) ballot |= (H.threads[t->warp * 32 + l].value ? 1ull : 0ull) << l;
    for (int l = 0; l < 32; l++) {
        if (!(mask >> l & 1u)) continue;
        HxThread *u = &H.threads[t->warp * 32 + l];
        if (op == MOE_HX_OP_BALLOT) {
            u->result = ballot;
        } else if (op == MOE_HX_OP_SYNCWARP || wmma) {
            u->result = 0;
        } else {
            int src = hx_src_lane(u);
            if (!(mask >> src & 1u)) {
                hx_fail("%s at %s:%d: lane %d reads lane %d, which is not in the mask 0x%08x", op_name(op), u->file,
                        u->line, l, src, mask);
                hx_park(t);
            }
            u->result = H.threads[t->warp * 32 + src].value;
        }
        if (u != t) u->state = T_READY;
    }
    w->arrived = 0;
    return t->result;
}

// ---------------------------------------------------------------------------------------
// shared memory

// Alignment of shared memory, as a GPU guarantees it: an array declared with an alignment
// (SHARED_ARRAY_ALIGNED, __align__ on the GPU) gets (at least) that; any other array, and dynamic
// shared memory, is 16-byte aligned (what float4 / uint4 accesses need) and deliberately NOT
// 32-byte aligned, so that code which needs 32 bytes (wmma tiles) without asking for it fails
// here every time instead of by luck on some GPU. Slack around the array is poisoned for ASan.
static char *hx_aligned_alloc(size_t bytes, size_t align, size_t *total, char **base) {
    size_t a = align ? align : 64, lead = align ? 0 : 16;
    *total = (lead + bytes + a - 1) / a * a;
    *base = (char *)aligned_alloc(a, *total);
    if (!*base) {
        fprintf(stderr, "cuda harness: out of memory\n");
        abort();
    }
    char *mem = *base + lead;
#ifdef HX_ASAN
    if (lead) __asan_poison_memory_region(*base, lead);
    __asan_poison_memory_region(mem + bytes, *total - lead - bytes);
#endif
    return mem;
}
static void hx_aligned_free(char *base, size_t total) {
    if (!base) return;
#ifdef HX_ASAN
    __asan_unpoison_memory_region(base, total);
#else
    (void)total;
#endif
    free(base);
}

void *moe_hx_shared_alloc(const void *key, size_t bytes, const char *file, int line) {
    return moe_hx_shared_alloc_aligned(key, bytes, 0, file, line);
}

void *moe_hx_shared_alloc_aligned(const void *key, size_t bytes, size_t align, const char *file, int line) {
    HxThread *t = hx_self("SHARED_ARRAY", file, line);
    if (!t) return NULL;
    for (int i = 0; i < H.nshared; i++)
        if (H.shared[i].key == key) return H.shared[i].mem;
    if (H.nshared == HX_MAX_KEYS) {
        hx_fail("more than %d shared arrays in one kernel (%s:%d)", HX_MAX_KEYS, file, line);
        hx_park(t);
    }
    if (bytes == 0 || H.shared_total + bytes > HX_MAX_SHARED) {
        hx_fail("static shared memory at %s:%d: %zu bytes (total %zu) exceeds the %d bytes of a block", file, line,
                bytes, H.shared_total + bytes, HX_MAX_SHARED);
        hx_park(t);
    }
    if (align != 0 && (align < 16 || align > 256 || (align & (align - 1)) != 0)) {
        hx_fail("shared array at %s:%d: alignment %zu is not a power of two in 16..256", file, line, align);
        hx_park(t);
    }
    // its own allocation: ASan catches out-of-bounds shared accesses
    size_t total;
    char *base;
    char *mem = hx_aligned_alloc(bytes, align, &total, &base);
    memset(mem, 0xFF, bytes);  // poison: NaN for floats, -1 for ints
    H.shared[H.nshared].key = key;
    H.shared[H.nshared].mem = mem;
    H.shared[H.nshared].base = base;
    H.shared[H.nshared].total = total;
    H.shared[H.nshared].bytes = bytes;
    H.nshared++;
    H.shared_total += bytes;
    return mem;
}

void *moe_hx_dynamic_shared(void) {
    HxThread *t = hx_self("DYNAMIC_SHARED", "?", 0);
    if (!t) return NULL;
    if (H.dyn_bytes == 0) {
        hx_fail("the kernel uses DYNAMIC_SHARED but was launched with 0 bytes of dynamic shared memory");
        hx_park(t);
    }
    return H.dyn;
}

static void hx_free_block_shared(void) {
    for (int i = 0; i < H.nshared; i++) hx_aligned_free((char *)H.shared[i].base, H.shared[i].total);
    H.nshared = 0;
    H.shared_total = 0;
}

// ---------------------------------------------------------------------------------------
// launch

// A fault in the guard page below a fiber stack is a stack overflow of a kernel thread: say so
// (instead of a bare segmentation fault). Not under ASan, which has its own handler.
#ifndef HX_ASAN
static struct sigaction hx_old_segv;
static void hx_put(const char *s) {
    if (s && write(2, s, strlen(s)) < 0) return;
}
static void hx_segv(int sig, siginfo_t *info, void *uctx) {
    (void)uctx;
    long page = sysconf(_SC_PAGESIZE);
    char *addr = (char *)info->si_addr;
    for (int i = 0; i < H.n_stacks; i++) {
        char *guard = H.threads[i].stack - page;
        if (addr >= guard - 4096 && addr < H.threads[i].stack) {
            hx_put("cuda harness: kernel ");
            hx_put(H.kernel);
            hx_put(" (launched at ");
            hx_put(H.lfile);
            hx_put("): a thread overflowed its 64 KiB fiber stack (deep recursion or large local arrays)\n");
            signal(SIGABRT, SIG_DFL);
            abort();
        }
    }
    sigaction(sig, &hx_old_segv, NULL);  // not ours: the previous handler / default crash
}
static void hx_install_segv(void) {
    static int done = 0;
    if (done) return;
    done = 1;
    static char alt[64 * 1024];
    stack_t ss;
    memset(&ss, 0, sizeof ss);
    ss.ss_sp = alt;
    ss.ss_size = sizeof alt;
    sigaltstack(&ss, NULL);
    struct sigaction sa;
    memset(&sa, 0, sizeof sa);
    sa.sa_sigaction = hx_segv;
    sa.sa_flags = SA_SIGINFO | SA_ONSTACK;
    sigemptyset(&sa.sa_mask);
    sigaction(SIGSEGV, &sa, &hx_old_segv);
}
#endif

static void hx_ensure_stacks(int n) {
#ifndef HX_ASAN
    hx_install_segv();
#endif
    if (!H.threads) {
        H.threads = (HxThread *)calloc(HX_MAX_THREADS, sizeof(HxThread));
        if (!H.threads) {
            fprintf(stderr, "cuda harness: out of memory\n");
            abort();
        }
    }
    long page = sysconf(_SC_PAGESIZE);
    while (H.n_stacks < n) {
        size_t total = HX_STACK_BYTES + (size_t)page;
        char *m = (char *)mmap(NULL, total, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
        if (m == MAP_FAILED) {
            fprintf(stderr, "cuda harness: cannot map a fiber stack\n");
            abort();
        }
        mprotect(m, (size_t)page, PROT_NONE);  // guard page: a stack overflow faults
        H.threads[H.n_stacks++].stack = m + page;
    }
}

// a fresh fiber for thread i of the block (separate function: getcontext returns twice)
static __attribute__((noinline)) void hx_init_thread(int i, dim3 block) {
    HxThread *t = &H.threads[i];
    t->state = T_READY;
    t->linear = i;
    t->lane = i % 32;
    t->warp = i / 32;
    t->tid = make_uint3(i % block.x, (i / block.x) % block.y, i / (block.x * block.y));
    t->fake_stack = NULL;
#ifdef HX_ASAN
    __asan_unpoison_memory_region(t->stack, HX_STACK_BYTES);
#endif
    getcontext(&t->ctx);
    t->ctx.uc_stack.ss_sp = t->stack;
    t->ctx.uc_stack.ss_size = HX_STACK_BYTES;
    t->ctx.uc_link = NULL;
    makecontext(&t->ctx, hx_entry, 0);
}

static void hx_deadlock(void) {
    char buf[600];
    int off = 0, nb = 0;
    for (int i = 0; i < H.nthreads; i++) nb += H.threads[i].state == T_WAIT_BLOCK;
    if (nb) off += snprintf(buf + off, sizeof buf - off, "%d threads wait at __syncthreads at %s:%d; ", nb, H.bfile, H.bline);
    for (int w = 0; w < H.nwarps && off < (int)sizeof buf - 120; w++)
        if (H.warps[w].arrived > 0)
            off += snprintf(buf + off, sizeof buf - off, "warp %d: %d lanes wait in %s (mask 0x%08x) at %s:%d; ", w,
                            H.warps[w].arrived, op_name(H.warps[w].op), H.warps[w].mask, H.warps[w].file, H.warps[w].line);
    hx_fail("deadlock: %d of %d threads are still running and none can proceed: %s", H.nthreads - H.ndone,
            H.nthreads, buf);
}

void moe_hx_launch_impl(const char *kernel, const char *file, int line, dim3 grid, dim3 block, size_t smem,
                        MoeHxFn fn, void *arg) {
    if (H.active) {
        hx_fail("kernel %s launched at %s:%d from inside kernel %s (dynamic parallelism is not modelled)", kernel,
                file, line, H.kernel);
        hx_park(&H.threads[H.cur]);
    }
    H.kernel = kernel;
    H.lfile = file;
    H.lline = line;
    long nthreads = (long)block.x * block.y * block.z;
    long nblocks = (long)grid.x * grid.y * grid.z;
    const char *bad = NULL;
    if (nthreads < 1 || nthreads > HX_MAX_THREADS || block.z > 64) bad = "block size out of range (1..1024 threads, z <= 64)";
    else if (nblocks < 1 || grid.y > 65535 || grid.z > 65535 || grid.x > 2147483647u) bad = "grid size out of range (empty grid, or y/z > 65535)";
    else if (smem > HX_MAX_SHARED) bad = "dynamic shared memory above 48 KiB (needs cudaFuncSetAttribute, not modelled)";
    if (bad) {
        snprintf(H.err, sizeof H.err, "cuda harness: kernel %s launched at %s:%d with grid (%u,%u,%u) block (%u,%u,%u) "
                 "smem %zu: %s", kernel, file, line, grid.x, grid.y, grid.z, block.x, block.y, block.z, smem, bad);
        if (!H.record) {
            fprintf(stderr, "%s\n", H.err);
            abort();
        }
        H.failed = 1;
        return;
    }
    H.launches++;
    int forward = (H.launches & 1) != 0;
    hx_ensure_stacks((int)nthreads);
    H.nthreads = (int)nthreads;
    H.nwarps = (H.nthreads + 31) / 32;
    H.fn = fn;
    H.arg = arg;
    H.dyn_bytes = smem;
    H.dyn = smem ? hx_aligned_alloc(smem, 0, &H.dyn_total, &H.dyn_base) : NULL;
    H.active = 1;
    H.failed = 0;
    moe_hx_state.gdim = grid;
    moe_hx_state.bdim = block;
    for (unsigned bz = 0; bz < grid.z && !H.failed; bz++)
        for (unsigned by = 0; by < grid.y && !H.failed; by++)
            for (unsigned bx = 0; bx < grid.x && !H.failed; bx++) {
                moe_hx_state.bid = make_uint3(bx, by, bz);
                if (H.dyn) memset(H.dyn, 0xFF, smem);
                H.ndone = 0;
                H.barrived = 0;
                memset(H.warps, 0, sizeof H.warps);
                for (int i = 0; i < H.nthreads; i++) hx_init_thread(i, block);
                while (H.ndone < H.nthreads && !H.failed) {
                    int progress = 0;
                    for (int k = 0; k < H.nthreads && !H.failed; k++) {
                        int i = forward ? k : H.nthreads - 1 - k;
                        if (H.threads[i].state == T_READY) {
                            hx_run(i);
                            progress = 1;
                        }
                    }
                    if (!progress && !H.failed) hx_deadlock();
                }
                hx_free_block_shared();
            }
    if (H.dyn) hx_aligned_free(H.dyn_base, H.dyn_total);
    H.dyn = H.dyn_base = NULL;
    H.dyn_bytes = 0;
    H.active = 0;
}

extern "C" void moe_hx_set_error_mode(int record) { H.record = record; }
extern "C" const char *moe_hx_last_error(void) { return H.err; }
extern "C" void moe_hx_clear_error(void) {
    H.err[0] = 0;
    H.failed = 0;
}
extern "C" long moe_hx_launch_count(void) { return H.launches; }
extern "C" long moe_hx_switch_count(void) { return H.switches; }

// ---------------------------------------------------------------------------------------
// CUDA runtime subset: device memory is host memory; everything is synchronous.

// A 256-byte header before each block keeps its size, so that cudaMemGetInfo can report the
// live device bytes (free = 8 GiB - live), as a GPU's does.
#define HX_DEVICE_BYTES ((size_t)8 << 30)
static size_t hx_live_bytes = 0;
cudaError_t cudaMalloc(void **p, size_t n) {
    *p = NULL;
    size_t bytes = ((n ? n : 1) + 255) & ~(size_t)255;
    if (hx_live_bytes + bytes > HX_DEVICE_BYTES) return cudaErrorMemoryAllocation;
    char *m = (char *)aligned_alloc(256, bytes + 256);
    if (!m) return cudaErrorMemoryAllocation;
    memcpy(m, &bytes, sizeof bytes);
    memset(m + 256, 0xFF, bytes);  // uninitialised device memory reads as NaN / -1
    hx_live_bytes += bytes;
    *p = m + 256;
    return cudaSuccess;
}
cudaError_t cudaFree(void *p) {
    if (!p) return cudaSuccess;
    char *m = (char *)p - 256;
    size_t bytes;
    memcpy(&bytes, m, sizeof bytes);
    hx_live_bytes -= bytes;
    free(m);
    return cudaSuccess;
}
cudaError_t cudaMemcpy(void *dst, const void *src, size_t n, enum cudaMemcpyKind kind) {
    (void)kind;
    if (n) memmove(dst, src, n);
    return cudaSuccess;
}
cudaError_t cudaMemcpyAsync(void *dst, const void *src, size_t n, enum cudaMemcpyKind kind, cudaStream_t s) {
    (void)s;
    return cudaMemcpy(dst, src, n, kind);
}
cudaError_t cudaMemset(void *p, int value, size_t n) {
    if (n) memset(p, value, n);
    return cudaSuccess;
}
cudaError_t cudaMemsetAsync(void *p, int value, size_t n, cudaStream_t s) {
    (void)s;
    return cudaMemset(p, value, n);
}
cudaError_t cudaDeviceSynchronize(void) { return cudaSuccess; }
cudaError_t cudaStreamSynchronize(cudaStream_t s) {
    (void)s;
    return cudaSuccess;
}
cudaError_t cudaGetLastError(void) { return H.failed ? cudaErrorLaunchFailure : cudaSuccess; }
cudaError_t cudaPeekAtLastError(void) { return cudaGetLastError(); }
const char *cudaGetErrorString(cudaError_t e) {
    switch (e) {
        case cudaSuccess: return "no error (cuda harness)";
        case cudaErrorMemoryAllocation: return "out of memory (cuda harness)";
        case cudaErrorLaunchFailure: return "kernel failed in the cuda harness";
        default: return "cuda harness error";
    }
}
cudaError_t cudaGetDeviceCount(int *count) {
    *count = 1;
    return cudaSuccess;
}
cudaError_t cudaMemGetInfo(size_t *free_bytes, size_t *total) {
    *free_bytes = HX_DEVICE_BYTES - hx_live_bytes;
    *total = HX_DEVICE_BYTES;
    return cudaSuccess;
}
