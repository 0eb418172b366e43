/* The little of a C library the guest needs, without a C library.
 *
 * GCC may turn loops into calls to memcpy/memset/memmove/memcmp even with
 * -ffreestanding, and zlib calls them, so they must exist. They are plain
 * byte loops: the guest's time goes to block reads and inflate, not here.
 * Solo5's bindings have their own copies, but those are local symbols.
 */
#include "guest.h"

void *memcpy(void *dst, const void *src, size_t n)
{
    uint8_t *d = dst;
    const uint8_t *s = src;
    while (n--)
        *d++ = *s++;
    return dst;
}

void *memmove(void *dst, const void *src, size_t n)
{
    uint8_t *d = dst;
    const uint8_t *s = src;
    if (d <= s || d >= s + n)
        return memcpy(dst, src, n);
    while (n--)                 /* overlapping, dst above src: copy backwards */
        d[n] = s[n];
    return dst;
}

void *memset(void *dst, int c, size_t n)
{
    uint8_t *d = dst;
    while (n--)
        *d++ = (uint8_t)c;
    return dst;
}

int memcmp(const void *a, const void *b, size_t n)
{
    const uint8_t *x = a, *y = b;
    for (; n; n--, x++, y++)
        if (*x != *y)
            return *x < *y ? -1 : 1;
    return 0;
}

size_t strlen(const char *s)
{
    size_t n = 0;
    while (s[n])
        n++;
    return n;
}

/* --- the arena ---------------------------------------------------------- */

static uint8_t *arena_base;
static size_t arena_size, arena_used;

void arena_init(uintptr_t start, size_t size)
{
    arena_base = (uint8_t *)start;
    arena_size = size;
    arena_used = 0;
}

void *arena_alloc(size_t n)
{
    /* 16-byte alignment suits any C object; the check avoids overflow. */
    size_t rounded = (n + 15) & ~(size_t)15;
    if (rounded < n || rounded > arena_size - arena_used)
        return NULL;
    void *p = arena_base + arena_used;
    arena_used += rounded;
    return p;
}

size_t arena_mark(void) { return arena_used; }
void arena_release(size_t mark) { arena_used = mark; }
size_t arena_left(void) { return arena_size - arena_used; }
size_t arena_offset(const void *p) { return (size_t)((const uint8_t *)p - arena_base); }

/* --- numbers as text ---------------------------------------------------- */

size_t fmt_u64(char *out, uint64_t v)
{
    char tmp[20];
    size_t n = 0;
    do {
        tmp[n++] = (char)('0' + v % 10);
        v /= 10;
    } while (v);
    for (size_t i = 0; i < n; i++)
        out[i] = tmp[n - 1 - i];
    return n;
}

void fmt_hex(char *out, const uint8_t *bytes, size_t n)
{
    static const char digits[] = "0123456789abcdef";
    for (size_t i = 0; i < n; i++) {
        out[2 * i] = digits[bytes[i] >> 4];
        out[2 * i + 1] = digits[bytes[i] & 15];
    }
}
