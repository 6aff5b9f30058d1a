/* LD_PRELOAD library: the process (and the threads it starts) sees an x86-64 CPU without AVX-512,
 * AMX and AVX-VNNI, as an AVX2-only CPU such as an AMD EPYC of the Zen 2/3 generations reports it.
 *
 * Every library picks its kernels from CPUID at run time: TensorFlow (whether it turns oneDNN on),
 * oneDNN, XNNPACK, Eigen's contraction kernels, XLA's code generator, PyTorch and MKL. With CPUID
 * faulting (Linux arch_prctl ARCH_SET_CPUID; /proc/cpuinfo flag "cpuid_fault") each CPUID traps;
 * the handler runs the real instruction and clears those feature bits. The clock, caches and
 * memory stay this machine's: the figures tell how each system's software runs on AVX2, not
 * how fast a given AMD machine is. Used by `make bench` (benchmarks/avx2_only/__init__.py). */
#define _GNU_SOURCE
#include <asm/prctl.h>
#include <cpuid.h>
#include <dlfcn.h>
#include <signal.h>
#include <string.h>
#include <sys/syscall.h>
#include <ucontext.h>
#include <unistd.h>

#ifndef ARCH_SET_CPUID
#define ARCH_SET_CPUID 0x1012
#endif
#define BIT(n) (1u << (n))

static struct sigaction previous;

static void mask(unsigned leaf, unsigned sub, unsigned *a, unsigned *b, unsigned *c, unsigned *d) {
  if (leaf == 7 && sub == 0) {
    /* AVX512 F, DQ, IFMA, PF, ER, CD, BW, VL */
    *b &= ~(BIT(16) | BIT(17) | BIT(21) | BIT(26) | BIT(27) | BIT(28) | BIT(30) | BIT(31));
    /* AVX512 VBMI, VBMI2, VNNI, BITALG, VPOPCNTDQ */
    *c &= ~(BIT(1) | BIT(6) | BIT(11) | BIT(12) | BIT(14));
    /* AVX512 4VNNIW, 4FMAPS, VP2INTERSECT, AMX-BF16, AVX512-FP16, AMX-TILE, AMX-INT8 */
    *d &= ~(BIT(2) | BIT(3) | BIT(8) | BIT(22) | BIT(23) | BIT(24) | BIT(25));
  } else if (leaf == 7 && sub == 1) {
    *a &= ~(BIT(4) | BIT(5)); /* AVX-VNNI, AVX512-BF16 */
  } else if (leaf == 0xd && sub == 0) {
    *a &= ~(0xe0u | 0x60000u); /* XSAVE state: opmask and ZMM registers, AMX tiles */
  }
}

static void on_segv(int sig, siginfo_t *info, void *data) {
  ucontext_t *uc = (ucontext_t *)data;
  greg_t *r = uc->uc_mcontext.gregs;
  const unsigned char *ip = (const unsigned char *)r[REG_RIP];
  if (ip[0] == 0x0f && ip[1] == 0xa2) { /* CPUID */
    unsigned leaf = (unsigned)r[REG_RAX], sub = (unsigned)r[REG_RCX], a, b, c, d;
    syscall(SYS_arch_prctl, ARCH_SET_CPUID, 1);
    __cpuid_count(leaf, sub, a, b, c, d);
    syscall(SYS_arch_prctl, ARCH_SET_CPUID, 0);
    mask(leaf, sub, &a, &b, &c, &d);
    r[REG_RAX] = a;
    r[REG_RBX] = b;
    r[REG_RCX] = c;
    r[REG_RDX] = d;
    r[REG_RIP] += 2;
    return;
  }
  /* A real fault: whoever handled SIGSEGV before, else the default (a core dump). */
  if (previous.sa_flags & SA_SIGINFO) {
    previous.sa_sigaction(sig, info, data);
  } else if (previous.sa_handler != SIG_DFL && previous.sa_handler != SIG_IGN) {
    previous.sa_handler(sig);
  } else {
    signal(sig, SIG_DFL);
    raise(sig);
  }
}

typedef int (*sigaction_fn)(int, const struct sigaction *, struct sigaction *);

static sigaction_fn real_sigaction(void) {
  static sigaction_fn real;
  if (!real) real = (sigaction_fn)dlsym(RTLD_NEXT, "sigaction");
  return real;
}

/* A SIGSEGV handler installed later (Python's faulthandler, pytest, absl) becomes the one real
 * faults go to, while CPUID traps still come here first. */
int sigaction(int sig, const struct sigaction *act, struct sigaction *old) {
  if (sig != SIGSEGV) return real_sigaction()(sig, act, old);
  if (old) *old = previous;
  if (act) previous = *act;
  return 0;
}

__attribute__((constructor)) static void start(void) {
  struct sigaction sa;
  memset(&sa, 0, sizeof sa);
  sa.sa_sigaction = on_segv;
  sa.sa_flags = SA_SIGINFO | SA_NODEFER;
  real_sigaction()(SIGSEGV, &sa, &previous);
  syscall(SYS_arch_prctl, ARCH_SET_CPUID, 0); /* inherited by the threads started later */
}
