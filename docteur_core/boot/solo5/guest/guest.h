/* docteur's Solo5 guest: shared declarations.
 *
 * The guest is freestanding: Solo5's API (solo5.h) and nothing else, no libc.
 * freestanding.c gives the few C library functions the compiler and zlib
 * expect (memcpy & co.), the arena and number formatting; sha256.c the
 * console's digest; sha1.c git's object ids; image.c reads a docteur image
 * through solo5_block_read, checking each object against its id;
 * docteur_guest.c is the entry point, the verbs and the framed output.
 */
#ifndef DOCTEUR_GUEST_H
#define DOCTEUR_GUEST_H

#include "solo5.h"

/* --- freestanding.c ---------------------------------------------------- */

void *memcpy(void *dst, const void *src, size_t n);
void *memmove(void *dst, const void *src, size_t n);
void *memset(void *dst, int c, size_t n);
int memcmp(const void *a, const void *b, size_t n);
size_t strlen(const char *s);

/* The arena: one bump allocator over Solo5's heap. Everything a lookup
 * needs (trees, delta chains, the file) is allocated here and dropped at
 * once with arena_release(mark); nothing is freed one by one. */
void arena_init(uintptr_t start, size_t size);
void *arena_alloc(size_t n);          /* NULL when it does not fit */
size_t arena_mark(void);
void arena_release(size_t mark);
size_t arena_left(void);
size_t arena_offset(const void *p);   /* the mark that releases p and after */

/* Decimal and hexadecimal text; each returns the number of chars written. */
size_t fmt_u64(char *out, uint64_t v);
void fmt_hex(char *out, const uint8_t *bytes, size_t n);  /* 2n chars */

/* --- sha256.c ---------------------------------------------------------- */

struct sha256 {
    uint32_t h[8];
    uint64_t length;        /* bytes hashed so far */
    uint8_t block[64];
    size_t used;            /* bytes waiting in block */
};

void sha256_init(struct sha256 *s);
void sha256_update(struct sha256 *s, const uint8_t *data, size_t n);
void sha256_final(struct sha256 *s, uint8_t digest[32]);

/* --- sha1.c ------------------------------------------------------------ */

struct sha1 {
    uint32_t h[5];
    uint64_t length;        /* bytes hashed so far */
    uint8_t block[64];
    size_t used;            /* bytes waiting in block */
};

void sha1_init(struct sha1 *s);
void sha1_update(struct sha1 *s, const uint8_t *data, size_t n);
void sha1_final(struct sha1 *s, uint8_t digest[20]);

/* --- image.c ----------------------------------------------------------- */

#define OBJ_COMMIT 1
#define OBJ_TREE 2
#define OBJ_BLOB 3
#define OBJ_TAG 4

#define MODE_DIR 0040000
#define MODE_LINK 0120000
#define MODE_GITLINK 0160000

/* Every failure is one line: fail() formats it into error_text and returns
 * -1, which callers pass up; the entry point prints `error: <text>`.
 * Formats: %s a string, %d an unsigned 64-bit number, %o a 20-byte object
 * id as 40 hex digits. */
extern char error_text[320];
int fail(const char *format, ...);

/* Acquire the block device `storage`, check the image's header, PACK header
 * and IDX header, and keep the IDX fanout. With `pin` (20 bytes, or NULL)
 * the header must name that commit ("wrong image: ..." otherwise). With
 * `verify`, every object image_get reads is hashed (git's SHA-1) and must
 * be the one its parent names: the commit the header's id (so the pin),
 * each tree the id its parent tree gives (the root: the commit's `tree`
 * line), the file its tree entry's id ("damaged image: SHA-1 mismatch"). */
int image_open(const uint8_t *pin, int verify);

/* Find `path` (components separated by '/', `..` stops at the root) from the
 * root tree of the image's commit; on success *data and *size hold the
 * file (its bytes, or a link's target) in the arena, checked as
 * image_open said. */
int image_get(const char *path, size_t length, uint8_t **data, uint64_t *size);

/* How many solo5_block_read calls the reader made (shown on request). */
uint64_t image_block_reads(void);

#endif
