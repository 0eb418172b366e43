/* docteur's Solo5 guest: read one file out of a docteur image.
 *
 *     solo5-spt --block:storage=IMAGE docteur_guest.spt [--solo5:quiet] \
 *         [-n] [-c COMMIT] VERB PATH
 *
 * VERB is `cat` (the file's bytes) or `sha256` ("sha256 <hex>  <size>\n").
 * PATH is percent-encoded by the host (Solo5 joins the arguments with
 * spaces, so a space in a path would be lost otherwise): %XX is byte XX.
 *
 * `-c COMMIT` (40 hex digits) pins the commit: an image whose header names
 * another is refused (`error: wrong image: ...`) before any object is
 * read. Every object on the way to PATH is checked against its git id
 * (SHA-1), back to the header's commit (see image.c), and the file whole
 * before a byte of it is printed (`error: damaged image: SHA-1 mismatch
 * ...` otherwise); `-n` (no verify) skips those checks, not the pin's.
 *
 * The console is shared with the tender's own messages, so everything the
 * guest says goes in frames the host can find and check:
 *
 *     @@docteur:begin STREAM LENGTH\n<LENGTH bytes>\n@@docteur:end STREAM SHA256\n
 *
 * STREAM is `out` (the result), `err` (one line `error: ...`) or `log`
 * (how many block reads it took). The exit status is 0, 1 on an error,
 * 2 on a bad command line.
 */
#include "guest.h"

/* The arena leaves this much below the top of the heap to the stack, which
 * Solo5 starts at heap_start + heap_size, growing down. */
#define STACK_RESERVE (1024 * 1024)
#define MAX_PATH 4096
#define CONSOLE_CHUNK (64 * 1024)

static void console(const void *data, uint64_t n)
{
    const char *p = data;
    while (n) {
        size_t take = n < CONSOLE_CHUNK ? (size_t)n : CONSOLE_CHUNK;
        solo5_console_write(p, take);
        p += take;
        n -= take;
    }
}

static void console_str(const char *s) { console(s, strlen(s)); }

static void console_u64(uint64_t v)
{
    char text[20];
    console(text, fmt_u64(text, v));
}

static void frame(const char *stream, const void *data, uint64_t n)
{
    struct sha256 s;
    uint8_t digest[32];
    char hex[64];
    sha256_init(&s);
    sha256_update(&s, data, (size_t)n);
    sha256_final(&s, digest);
    fmt_hex(hex, digest, 32);
    console_str("@@docteur:begin ");
    console_str(stream);
    console_str(" ");
    console_u64(n);
    console_str("\n");
    console(data, n);
    console_str("\n@@docteur:end ");
    console_str(stream);
    console_str(" ");
    console(hex, 64);
    console_str("\n");
}

/* One line `error: <text>` on the err stream; returns the exit status. */
static int report(const char *text, int status)
{
    static char line[400];
    size_t n = 0, len = strlen(text);
    memcpy(line, "error: ", 7);
    n = 7;
    if (len > sizeof line - n - 1)
        len = sizeof line - n - 1;
    memcpy(line + n, text, len);
    n += len;
    line[n++] = '\n';
    frame("err", line, n);
    return status;
}

static void report_reads(void)
{
    char text[48];
    size_t n = fmt_u64(text, image_block_reads());
    memcpy(text + n, " block reads\n", 13);
    frame("log", text, n + 13);
}

static int hex_digit(char c)
{
    if (c >= '0' && c <= '9')
        return c - '0';
    if (c >= 'a' && c <= 'f')
        return c - 'a' + 10;
    if (c >= 'A' && c <= 'F')
        return c - 'A' + 10;
    return -1;
}

/* Decode %XX escapes of `text` (up to a space or the end) into `out`. */
static int unescape(const char *text, char *out, size_t *length)
{
    size_t n = 0;
    for (; *text && *text != ' '; text++) {
        char c = *text;
        if (c == '%') {
            int hi = hex_digit(text[1]), lo = hi < 0 ? -1 : hex_digit(text[2]);
            if (lo < 0)
                return -1;
            c = (char)(hi << 4 | lo);
            text += 2;
        }
        if (n == MAX_PATH)
            return -1;
        out[n++] = c;
    }
    *length = n;
    return 0;
}

/* 40 hex digits (then a space or the end) as 20 bytes. */
static int parse_id(const char *text, uint8_t id[20])
{
    for (int i = 0; i < 40; i++) {
        int v = hex_digit(text[i]);
        if (v < 0)
            return -1;
        id[i / 2] = (uint8_t)(i & 1 ? id[i / 2] | v : v << 4);
    }
    return text[40] == ' ' || text[40] == 0 ? 0 : -1;
}

static int word_is(const char *p, const char *word)
{
    size_t n = strlen(word);
    return memcmp(p, word, n) == 0 && (p[n] == ' ' || p[n] == 0);
}

static const char *skip_spaces(const char *p)
{
    while (*p == ' ')
        p++;
    return p;
}

/* "sha256 <64 hex>  <size>\n": the format of `sha256sum`, plus the size. */
static void print_digest(const uint8_t *data, uint64_t size)
{
    struct sha256 s;
    uint8_t digest[32];
    char line[7 + 64 + 2 + 20 + 1];
    size_t n = 0;
    sha256_init(&s);
    sha256_update(&s, data, (size_t)size);
    sha256_final(&s, digest);
    memcpy(line, "sha256 ", 7);
    n = 7;
    fmt_hex(line + n, digest, 32);
    n += 64;
    line[n++] = ' ';
    line[n++] = ' ';
    n += fmt_u64(line + n, size);
    line[n++] = '\n';
    frame("out", line, n);
}

#define USAGE "usage: [-n] [-c COMMIT] cat PATH | sha256 PATH (PATH " \
              "percent-encoded, COMMIT 40 hex digits)"

int solo5_app_main(const struct solo5_start_info *si)
{
    static char path[MAX_PATH];
    const char *p = skip_spaces(si->cmdline);
    int digest, verify = 1;
    uint8_t pin[20], *pinned = NULL;
    size_t length;
    uint8_t *data;
    uint64_t size;

    if (si->heap_size <= 2 * STACK_RESERVE)
        return report("the unikernel has too little memory", 1);
    arena_init(si->heap_start, si->heap_size - STACK_RESERVE);

    for (;;) {
        if (word_is(p, "-n")) {
            verify = 0;
            p = skip_spaces(p + 2);
        } else if (word_is(p, "-c")) {
            p = skip_spaces(p + 2);
            if (parse_id(p, pin))
                return report(USAGE, 2);
            pinned = pin;
            p = skip_spaces(p + 40);
        } else {
            break;
        }
    }
    if (!word_is(p, "cat") && !word_is(p, "sha256"))
        return report(USAGE, 2);
    digest = word_is(p, "sha256");
    p = skip_spaces(p + (digest ? 6 : 3));
    if (!*p || unescape(p, path, &length))
        return report(USAGE " (PATH at most 4096 bytes)", 2);
    while (*p && *p != ' ')
        p++;
    if (*skip_spaces(p))
        return report(USAGE " (one PATH)", 2);

    /* Nothing goes on the out stream before image_get has returned: the
     * file is checked whole first. */
    if (image_open(pinned, verify) || image_get(path, length, &data, &size)) {
        report_reads();
        return report(error_text, 1);
    }
    report_reads();
    if (digest)
        print_digest(data, size);
    else
        frame("out", data, size);
    return 0;
}
