/* LD_PRELOAD library: the process (and the threads it starts) sees an x86-64 CPU without AVX-512,
 * AMX and AVX-VNNI, as an AVX2-only CPU such as an AMD EPYC of the Zen 2/3 generations reports it.
 *
 * Every library picks its kernels from CPUID at run time: TensorFlow (whether it turns oneDNN on),
 * oneDNN, XNNPACK, Eigen's contraction kernels, XLA's code generator, PyTorch and MKL. With CPUID
 * faulting (Linux arch_prctl ARCH_SET_CPUID; /proc/cpuinfo flag "cpuid_fault") each CPUID traps;
 * the handler runs the real instruction and clears those feature bits. The clock, caches and
 * memory stay this machine's: the figures tell how each system's software runs on AVX2, not
 * how fast a given AMD machine is. /proc/cpuinfo, where code that runs no CPUID reads the CPU's
 * features (gpt2_tf's own hardware checks: bfloat16 support, AMX), opens as a copy whose flags
 * lines lack the same features. Used by `make bench` (benchmarks/avx2_only/__init__.py). */
#define _GNU_SOURCE
#include <asm/prctl.h>
#include <cpuid.h>
#include <dlfcn.h>
#include <fcntl.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
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

/* /proc/cpuinfo's flags that the CPUID mask above takes away: AVX-512 (every avx512* flag), AMX and
 * AVX-VNNI. */
static int hidden_flag(const char *flag, size_t n) {
  return (n >= 6 && strncmp(flag, "avx512", 6) == 0) || (n >= 4 && strncmp(flag, "amx_", 4) == 0) ||
         (n == 8 && strncmp(flag, "avx_vnni", 8) == 0);
}

#define CPUINFO "/proc/cpuinfo"
#define CPUINFO_MAX (1 << 20)

/* A memfd holding /proc/cpuinfo with the hidden flags dropped from its "flags" lines, at offset 0;
 * -1 (errno set) where it cannot be made. Read with raw syscalls: the open() below is this
 * library's own. */
static int masked_cpuinfo(void) {
  /* Per call, not static: two threads may open the file at once. The copy is never longer than
   * the file (each kept flag keeps the one space before it), which must fit in CPUINFO_MAX. */
  char *in = malloc(CPUINFO_MAX), *out = malloc(CPUINFO_MAX);
  int src = in && out ? (int)syscall(SYS_openat, AT_FDCWD, CPUINFO, O_RDONLY | O_CLOEXEC) : -1;
  if (src < 0) {
    free(in);
    free(out);
    return -1;
  }
  size_t len = 0;
  for (ssize_t got; len < CPUINFO_MAX - 1 && (got = read(src, in + len, CPUINFO_MAX - 1 - len)) > 0;)
    len += (size_t)got;
  close(src);
  in[len] = 0;
  size_t o = 0;
  for (char *line = in; *line;) {
    char *end = strchr(line, '\n');
    size_t n = end ? (size_t)(end - line) + 1 : strlen(line);
    char *colon = memchr(line, ':', n);
    if (strncmp(line, "flags", 5) == 0 && colon) {
      size_t head = (size_t)(colon - line) + 1;
      memcpy(out + o, line, head);
      o += head;
      for (char *p = colon + 1; p < line + n;) {
        while (p < line + n && (*p == ' ' || *p == '\n')) p++;
        char *q = p;
        while (q < line + n && *q != ' ' && *q != '\n') q++;
        if (q > p && !hidden_flag(p, (size_t)(q - p))) {
          out[o++] = ' ';
          memcpy(out + o, p, (size_t)(q - p));
          o += (size_t)(q - p);
        }
        p = q;
      }
      if (end) out[o++] = '\n';
    } else {
      memcpy(out + o, line, n);
      o += n;
    }
    line += n;
  }
  free(in);
  int fd = memfd_create("cpuinfo", MFD_CLOEXEC);
  if (fd >= 0 && (write(fd, out, o) != (ssize_t)o || lseek(fd, 0, SEEK_SET) != 0)) {
    close(fd);
    fd = -1;
  }
  free(out);
  return fd;
}

static int is_cpuinfo(const char *path) { return path && strcmp(path, CPUINFO) == 0; }

typedef int (*openat_fn)(int, const char *, int, ...);
typedef FILE *(*fopen_fn)(const char *, const char *);

/* `mode`, open's optional third argument: read only where the flags say it was passed. */
#define MODE_ARG(flags)                                                   \
  mode_t mode = 0;                                                        \
  if (((flags) & O_CREAT) || ((flags) & O_TMPFILE) == O_TMPFILE) {        \
    va_list ap;                                                           \
    va_start(ap, flags);                                                  \
    mode = va_arg(ap, mode_t);                                            \
    va_end(ap);                                                           \
  }
#define OPENAT(name)                                                      \
  int name(int dir, const char *path, int flags, ...) {                   \
    MODE_ARG(flags)                                                       \
    if (is_cpuinfo(path)) return masked_cpuinfo();                        \
    static openat_fn real;                                                \
    if (!real) real = (openat_fn)dlsym(RTLD_NEXT, #name);                 \
    return real(dir, path, flags, mode);                                  \
  }
/* open(path) is openat(AT_FDCWD, path), as glibc itself implements it. */
#define OPEN(name, at)                                                    \
  int name(const char *path, int flags, ...) {                            \
    MODE_ARG(flags)                                                       \
    return at(AT_FDCWD, path, flags, mode);                               \
  }
#define FOPEN(name)                                                       \
  FILE *name(const char *path, const char *how) {                         \
    if (is_cpuinfo(path)) {                                               \
      int fd = masked_cpuinfo();                                          \
      return fd < 0 ? NULL : fdopen(fd, "r");                             \
    }                                                                     \
    static fopen_fn real;                                                 \
    if (!real) real = (fopen_fn)dlsym(RTLD_NEXT, #name);                  \
    return real(path, how);                                               \
  }
OPENAT(openat)
OPENAT(openat64)
OPEN(open, openat)
OPEN(open64, openat64)
FOPEN(fopen)
FOPEN(fopen64)

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
