/* blixard-seed SECONDS NANOSECONDS HEX: the guest init's reseed after its workload arrives
 * (docs/guest-images.md). Guests restored from one snapshot share the kernel's CRNG state and a
 * clock stopped at the save, so the host sends the time and fresh random bytes with each
 * workload: this sets the clock, adds the bytes to the input pool with entropy credited
 * (RNDADDENTROPY) and forces the CRNG to reseed from it now (RNDRESEEDCRNG); writing them to
 * /dev/urandom would only mix them in. busybox has neither ioctl.
 *
 * Freestanding (no libc, raw x86-64 system calls): built with `gcc -static -nostdlib` at build
 * time and embedded in the base archive, a few KB where a static glibc binary is 750 KB. */
#include <asm/unistd_64.h>
#include <linux/fcntl.h>
#include <linux/random.h>
#include <linux/time.h>

#define MAX_BYTES 64

static long sys3(long n, long a, long b, long c) {
  long r;
  __asm__ volatile("syscall" : "=a"(r) : "a"(n), "D"(a), "S"(b), "d"(c) : "rcx", "r11", "memory");
  return r;
}

static void say(const char* s) {
  long n = 0;
  while (s[n]) ++n;
  sys3(__NR_write, 2, (long)s, n);
}

static __attribute__((noreturn)) void leave(int code) {
  for (;;) sys3(__NR_exit_group, code, 0, 0);
}

static int fail(const char* s) {
  say("blixard-seed: ");
  say(s);
  say("\n");
  return 1;
}

static int decimal(const char* s, long* out) {
  long v = 0;
  if (!*s) return 0;
  for (; *s; ++s) {
    if (*s < '0' || *s > '9' || v > 922337203685477580L) return 0;
    v = v * 10 + (*s - '0');
  }
  *out = v;
  return 1;
}

static int nibble(char c) {
  if (c >= '0' && c <= '9') return c - '0';
  if (c >= 'a' && c <= 'f') return c - 'a' + 10;
  return -1;
}

static int run(int argc, char** argv) {
  if (argc != 4) return fail("usage: blixard-seed SECONDS NANOSECONDS HEX");
  struct timespec now;
  long s = 0, ns = 0;
  if (!decimal(argv[1], &s) || !decimal(argv[2], &ns) || ns >= 1000000000L)
    return fail("not a time");
  now.tv_sec = s;
  now.tv_nsec = ns;
  if (sys3(__NR_clock_settime, CLOCK_REALTIME, (long)&now, 0) != 0)
    return fail("cannot set the clock");

  struct {
    struct rand_pool_info info;
    unsigned char bytes[MAX_BYTES];
  } pool;
  int n = 0;
  for (const char* h = argv[3]; h[0] && h[1] && n < MAX_BYTES; h += 2) {
    const int hi = nibble(h[0]), lo = nibble(h[1]);
    if (hi < 0 || lo < 0) return fail("not hex");
    pool.bytes[n++] = (unsigned char)(hi << 4 | lo);
  }
  if (n < 32) return fail("fewer than 32 random bytes");
  pool.info.entropy_count = n * 8;
  pool.info.buf_size = n;
  const long fd = sys3(__NR_open, (long)"/dev/random", O_WRONLY | O_CLOEXEC, 0);
  if (fd < 0) return fail("cannot open /dev/random");
  if (sys3(__NR_ioctl, fd, RNDADDENTROPY, (long)&pool) != 0) return fail("RNDADDENTROPY failed");
  if (sys3(__NR_ioctl, fd, RNDRESEEDCRNG, 0) != 0) return fail("RNDRESEEDCRNG failed");
  /* The bytes are not left on the stack for whatever runs next in this process (nothing). */
  for (int i = 0; i < MAX_BYTES; ++i) ((volatile unsigned char*)pool.bytes)[i] = 0;
  return 0;
}

/* The kernel enters here with argc at the stack pointer, argv after it. */
__attribute__((used)) static void start_c(long* sp) { leave(run((int)sp[0], (char**)(sp + 1))); }

__asm__(
    ".text\n"
    ".global _start\n"
    "_start:\n"
    "  xor %rbp, %rbp\n"
    "  mov %rsp, %rdi\n"
    "  and $-16, %rsp\n"
    "  call start_c\n"
    "  hlt\n");
