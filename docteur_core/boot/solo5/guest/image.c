/* Reading a docteur image through Solo5's block API, the way the OCaml
 * docteur's light mode does: nothing is loaded up front but the header and
 * the IDX fanout; a lookup walks the trees from the commit, finding each
 * object with a binary search of the IDX, and inflates pack entries
 * (following OFS_DELTA and REF_DELTA chains) into the arena.
 *
 * Verified (the default): the IDX only says where an object's entry is;
 * what the entry holds is trusted once it hashes (git's SHA-1 of
 * "<type> <size>\0<content>") to the id that named it: the commit to the
 * header's id (equal to the pin, when one is given), the root tree to the
 * commit's `tree` line, each tree and the file to their parent tree's
 * entry. A file is checked whole before the entry point prints a byte of
 * it. Delta bases need no check of their own: the object they build is
 * checked. Unverified (-n), only the header's id is compared with a pin.
 *
 * The image: 20-byte commit id, 8-byte little-endian offset of the IDX, a
 * Git PACK (at offset 28), zero padding, the pack's .idx (version 2), zero
 * padding. Pack offsets in the IDX count from the PACK signature.
 *
 * Solo5's rule: every solo5_block_read reads exactly one whole block at an
 * aligned offset inside the device. block_of() is the only caller, and it
 * keeps the last block read, so byte-wise readers above it cost one call
 * per block they touch. The device's block size (512 for a file in spt,
 * or --block-sector-size) has nothing to do with the padding block size
 * the image was made with: only offsets matter here.
 */
#include "guest.h"
#include "zlib.h"
#include <stdarg.h>

#define PACK_AT 28              /* image offset of the PACK signature */
#define IDX_TABLES 1032         /* IDX header (8) + fanout (256 * 4) */
#define MAX_BLOCK 65536
#define MAX_CHAIN 10000         /* longer delta chains are taken for cycles */
#define MAX_COMPONENTS 1024

#define OFS_DELTA 6
#define REF_DELTA 7

/* --- errors ------------------------------------------------------------- */

char error_text[320];

int fail(const char *format, ...)
{
    va_list ap;
    size_t n = 0, room = sizeof error_text - 1;
    char tmp[41];
    va_start(ap, format);
    for (const char *f = format; *f && n < room; f++) {
        const char *piece = tmp;
        size_t len = 1;
        if (*f != '%' || !f[1]) {
            tmp[0] = *f;
        } else if (*++f == 's') {
            piece = va_arg(ap, const char *);
            len = strlen(piece);
        } else if (*f == 'd') {
            len = fmt_u64(tmp, va_arg(ap, uint64_t));
        } else if (*f == 'o') {
            fmt_hex(tmp, va_arg(ap, const uint8_t *), 20);
            len = 40;
        } else {
            tmp[0] = *f;
        }
        if (len > room - n)
            len = room - n;
        memcpy(error_text + n, piece, len);
        n += len;
    }
    va_end(ap);
    error_text[n] = 0;
    return -1;
}

/* --- the block device --------------------------------------------------- */

static solo5_handle_t device;
static struct solo5_block_info device_info;
static uint8_t block[MAX_BLOCK] __attribute__((aligned(16)));
static uint64_t block_at = (uint64_t)-1;   /* device offset of block[] */
static uint64_t reads;

uint64_t image_block_reads(void) { return reads; }

/* The cached block holding device offset `off` (read if needed); *skip is
 * the position of `off` in it. NULL (with the error set) on failure. */
static const uint8_t *block_of(uint64_t off, size_t *skip)
{
    uint64_t start = off - off % device_info.block_size;
    if (start != block_at) {
        if (off >= device_info.capacity) {
            fail("damaged image: a read at offset %d is past the end of the "
                 "device (%d bytes)", off, device_info.capacity);
            return NULL;
        }
        block_at = (uint64_t)-1;
        if (solo5_block_read(device, start, block, device_info.block_size)
                != SOLO5_R_OK) {
            fail("solo5_block_read failed at offset %d", start);
            return NULL;
        }
        block_at = start;
        reads++;
    }
    *skip = (size_t)(off - start);
    return block;
}

/* `n` bytes at any device offset, through block_of(). */
static int read_at(uint64_t off, void *dst, size_t n)
{
    uint8_t *out = dst;
    while (n) {
        size_t skip, take;
        const uint8_t *b = block_of(off, &skip);
        if (!b)
            return -1;
        take = device_info.block_size - skip;
        if (take > n)
            take = n;
        memcpy(out, b + skip, take);
        out += take;
        off += take;
        n -= take;
    }
    return 0;
}

static uint32_t be32(const uint8_t *p)
{
    return (uint32_t)p[0] << 24 | (uint32_t)p[1] << 16 | (uint32_t)p[2] << 8 | p[3];
}

/* --- header and IDX ----------------------------------------------------- */

static uint8_t commit_id[20];
static int verifying;           /* hash every object against its id */
static uint64_t idx_at;         /* device offset of the IDX: the pack ends before */
static uint32_t fanout[256];
static uint32_t count;          /* objects in the pack and the IDX */

static int check_block_size(uint64_t size)
{
    if (size < 512 || size > MAX_BLOCK || (size & (size - 1)))
        return fail("unsupported device block size %d (a power of two from "
                    "512 to %d)", size, (uint64_t)MAX_BLOCK);
    return 0;
}

static int read_fanout(void)
{
    uint8_t raw[1024];
    if (read_at(idx_at + 8, raw, sizeof raw))
        return -1;
    for (int i = 0; i < 256; i++) {
        fanout[i] = be32(raw + 4 * i);
        if (i && fanout[i] < fanout[i - 1])
            return fail("damaged image: IDX fanout decreases at entry %d",
                        (uint64_t)i);
    }
    count = fanout[255];
    return 0;
}

int image_open(const uint8_t *pin, int verify)
{
    uint8_t header[28], pack[12], idx[8];
    if (solo5_block_acquire("storage", &device, &device_info) != SOLO5_R_OK)
        return fail("no block device named storage (--block:storage=IMAGE)");
    if (check_block_size(device_info.block_size))
        return -1;
    if (read_at(0, header, sizeof header))
        return -1;
    memcpy(commit_id, header, 20);
    verifying = verify;
    if (pin && memcmp(pin, commit_id, 20))
        return fail("wrong image: it holds commit %o, not the pinned %o",
                    commit_id, pin);
    idx_at = 0;
    for (int i = 7; i >= 0; i--)
        idx_at = idx_at << 8 | header[20 + i];
    if (idx_at < PACK_AT + 32 || idx_at > device_info.capacity
            || device_info.capacity - idx_at < IDX_TABLES)
        return fail("damaged image: IDX offset %d outside the device "
                    "(%d bytes)", idx_at, device_info.capacity);
    if (read_at(PACK_AT, pack, sizeof pack) || read_at(idx_at, idx, sizeof idx))
        return -1;
    if (memcmp(pack, "PACK", 4) || (be32(pack + 4) != 2 && be32(pack + 4) != 3))
        return fail("damaged image: no PACK version 2 at offset %d",
                    (uint64_t)PACK_AT);
    if (memcmp(idx, "\377tOc", 4) || be32(idx + 4) != 2)
        return fail("damaged image: no IDX version 2 at offset %d", idx_at);
    if (read_fanout())
        return -1;
    if (count != be32(pack + 8))
        return fail("damaged image: the PACK holds %d objects, the IDX %d",
                    (uint64_t)be32(pack + 8), (uint64_t)count);
    return 0;
}

/* The pack offset of the 64-bit table's entry `k` (offsets >= 2^31). */
static int large_offset(uint32_t k, uint64_t *pack_off)
{
    uint8_t raw[8];
    if (read_at(idx_at + IDX_TABLES + (uint64_t)count * 28 + (uint64_t)k * 8,
                raw, 8))
        return -1;
    *pack_off = 0;
    for (int i = 0; i < 8; i++)
        *pack_off = *pack_off << 8 | raw[i];
    return 0;
}

/* Binary search of the IDX's sorted ids, between the fanout's bounds for
 * the first byte; each probe reads the one block holding that id.
 * 1 found (*pack_off set), 0 absent, -1 error. */
static int idx_find(const uint8_t id[20], uint64_t *pack_off)
{
    uint32_t lo = id[0] ? fanout[id[0] - 1] : 0, hi = fanout[id[0]];
    uint8_t probe[20], raw[4];
    while (lo < hi) {
        uint32_t mid = lo + (hi - lo) / 2;
        if (read_at(idx_at + IDX_TABLES + (uint64_t)mid * 20, probe, 20))
            return -1;
        int c = memcmp(probe, id, 20);
        if (c < 0) {
            lo = mid + 1;
        } else if (c > 0) {
            hi = mid;
        } else {
            if (read_at(idx_at + IDX_TABLES + (uint64_t)count * 24
                        + (uint64_t)mid * 4, raw, 4))
                return -1;
            *pack_off = be32(raw);
            if ((*pack_off & 0x80000000u) && large_offset(be32(raw) & 0x7fffffff, pack_off))
                return -1;
            if (*pack_off < 12 || *pack_off >= idx_at - PACK_AT)
                return fail("damaged image: IDX offset %d of %o is outside the "
                            "pack", *pack_off, id);
            return 1;
        }
    }
    return 0;
}

/* --- pack entries --------------------------------------------------------- */

struct entry {
    uint64_t at;        /* pack offset of the entry */
    int type;           /* 1-4 (commit, tree, blob, tag), 6 or 7 (deltas) */
    uint64_t size;      /* inflated size (of the delta data for deltas) */
    uint64_t data;      /* device offset of the zlib stream */
    uint64_t base;      /* deltas: pack offset of the base entry */
};

/* The varint after the type nibble: size, little-endian 7-bit groups. */
static int entry_size(const uint8_t *h, size_t avail, size_t *i, uint64_t *size)
{
    uint8_t c = h[0];
    int shift = 4;
    *size = c & 15;
    *i = 1;
    while (c & 0x80) {
        if (*i >= avail || shift > 57)
            return -1;
        c = h[(*i)++];
        *size |= (uint64_t)(c & 0x7f) << shift;
        shift += 7;
    }
    return 0;
}

/* OFS_DELTA's distance back to the base: big-endian 7-bit groups, +1 per
 * continuation (git's encoding, so that no two encodings mean the same). */
static int ofs_distance(const uint8_t *h, size_t avail, size_t *i, uint64_t *dist)
{
    uint8_t c;
    if (*i >= avail)
        return -1;
    c = h[(*i)++];
    *dist = c & 0x7f;
    while (c & 0x80) {
        if (*i >= avail || *dist >= ((uint64_t)1 << 56))
            return -1;
        c = h[(*i)++];
        *dist = ((*dist + 1) << 7) | (c & 0x7f);
    }
    return 0;
}

static int read_entry(uint64_t at, struct entry *e)
{
    uint8_t h[32];
    uint64_t start = PACK_AT + at, left = idx_at - start;
    size_t avail = left < sizeof h ? (size_t)left : sizeof h, i;
    int found;
    if (read_at(start, h, avail))
        return -1;
    e->at = at;
    e->type = (h[0] >> 4) & 7;
    if (entry_size(h, avail, &i, &e->size))
        return fail("damaged image: bad entry header at pack offset %d", at);
    if (e->type == OFS_DELTA) {
        uint64_t dist;
        if (ofs_distance(h, avail, &i, &dist) || dist == 0 || dist > at - 12)
            return fail("damaged image: bad delta base offset in the entry at "
                        "pack offset %d", at);
        e->base = at - dist;
    } else if (e->type == REF_DELTA) {
        if (avail - i < 20)
            return fail("damaged image: truncated entry at pack offset %d", at);
        found = idx_find(h + i, &e->base);
        if (found <= 0)
            return found < 0 ? -1 : fail("damaged image: the delta base %o of "
                    "the entry at pack offset %d is not in the image", h + i, at);
        i += 20;
    } else if (e->type == 0 || e->type == 5) {
        return fail("damaged image: entry type %d at pack offset %d",
                    (uint64_t)e->type, at);
    }
    e->data = start + i;
    return 0;
}

/* --- inflate ------------------------------------------------------------ */

/* zlib (built with Z_SOLO: no libc, allocation is ours) allocates its state
 * (~7 KiB) and, on first use, its 32 KiB window; both are kept for every
 * later object (inflateReset), so they come from this static pool rather
 * than from the arena, which lookups reset. */
static uint8_t zpool[64 * 1024] __attribute__((aligned(16)));
static size_t zpool_used;
static z_stream zs;
static int zs_ready;

static voidpf zalloc(voidpf opaque, uInt items, uInt size)
{
    uint64_t n = ((uint64_t)items * size + 15) & ~(uint64_t)15;
    (void)opaque;
    if (n > sizeof zpool - zpool_used)
        return Z_NULL;
    zpool_used += n;
    return zpool + zpool_used - n;
}

static void zfree(voidpf opaque, voidpf p) { (void)opaque; (void)p; }

static int zlib_start(void)
{
    zs.avail_in = 0;    /* what the last stream left is not this one's */
    if (zs_ready)
        return inflateReset(&zs) == Z_OK ? 0 : fail("inflateReset failed");
    zs.zalloc = zalloc;
    zs.zfree = zfree;
    zs.next_in = Z_NULL;
    zs.avail_in = 0;
    if (inflateInit(&zs) != Z_OK)
        return fail("inflateInit failed");
    zs_ready = 1;
    return 0;
}

/* Give zlib the next input: the rest of the block holding `*at`, never
 * past the end of the pack. */
static int feed(uint64_t *at, const struct entry *e)
{
    size_t skip;
    const uint8_t *b;
    uint64_t take;
    if (*at >= idx_at)
        return fail("damaged image: the entry at pack offset %d runs past the "
                    "pack", e->at);
    if (!(b = block_of(*at, &skip)))
        return -1;
    take = device_info.block_size - skip;
    if (take > idx_at - *at)
        take = idx_at - *at;
    zs.next_in = (Bytef *)(b + skip);
    zs.avail_in = (uInt)take;
    *at += take;
    return 0;
}

/* Inflate entry `e` into `out`, which holds exactly e->size bytes. */
static int inflate_entry(const struct entry *e, uint8_t *out)
{
    uint8_t none;
    uint64_t at = e->data, left = e->size;
    const uInt chunk = 1u << 30;          /* avail_out is 32 bits */
    if (zlib_start())
        return -1;
    zs.next_out = e->size ? out : &none;
    zs.avail_out = 0;
    for (;;) {
        int r;
        if (zs.avail_in == 0 && feed(&at, e))
            return -1;
        if (zs.avail_out == 0 && left) {
            zs.avail_out = left < chunk ? (uInt)left : chunk;
            left -= zs.avail_out;
        }
        r = inflate(&zs, Z_NO_FLUSH);
        if (r == Z_STREAM_END)
            break;
        if (r == Z_BUF_ERROR && zs.avail_out == 0 && !left)
            return fail("damaged image: the entry at pack offset %d inflates to "
                        "more than its %d bytes", e->at, e->size);
        if (r != Z_OK && r != Z_BUF_ERROR)
            return fail("damaged image: the entry at pack offset %d is not "
                        "valid zlib data (%s)", e->at, zs.msg ? zs.msg : "?");
    }
    if (zs.total_out != e->size)
        return fail("damaged image: the entry at pack offset %d inflates to %d "
                    "bytes, its header says %d", e->at, (uint64_t)zs.total_out,
                    e->size);
    return 0;
}

/* Room for `size` bytes of object data in the arena, or the error saying
 * the object does not fit. */
static uint8_t *room_for(uint64_t size, uint64_t at)
{
    uint8_t *p = size <= (uint64_t)arena_left() ? arena_alloc((size_t)size) : NULL;
    if (!p)
        fail("object too big for the memory: the entry at pack offset %d "
             "needs %d bytes, %d are left (give the unikernel more memory)",
             at, size, (uint64_t)arena_left());
    return p;
}

static uint8_t *inflate_new(const struct entry *e)
{
    uint8_t *p = room_for(e->size, e->at);
    return p && inflate_entry(e, p) == 0 ? p : NULL;
}

/* --- deltas ------------------------------------------------------------- */

/* The delta's source and target sizes: little-endian 7-bit groups. */
static int delta_varint(const uint8_t **p, const uint8_t *end, uint64_t *v)
{
    int shift = 0;
    *v = 0;
    do {
        if (*p >= end || shift > 63)
            return -1;
        *v |= (uint64_t)(**p & 0x7f) << shift;
        shift += 7;
    } while (*(*p)++ & 0x80);
    return 0;
}

/* One copy instruction: which bytes of the base (offset and size, each
 * byte present if its bit is set; size 0 means 0x10000). */
static int delta_copy(uint8_t op, const uint8_t **p, const uint8_t *end,
                      uint64_t *offset, uint64_t *size)
{
    *offset = *size = 0;
    for (int i = 0; i < 7; i++) {
        if (!(op & (1 << i)))
            continue;
        if (*p >= end)
            return -1;
        if (i < 4)
            *offset |= (uint64_t)*(*p)++ << (8 * i);
        else
            *size |= (uint64_t)*(*p)++ << (8 * (i - 4));
    }
    if (*size == 0)
        *size = 0x10000;
    return 0;
}

/* Rebuild a delta's target into `out` (`out_size` bytes, from the delta's
 * header) from `base`; `p` is past the header. */
static int apply_delta(const uint8_t *base, uint64_t base_size,
                       const uint8_t *p, const uint8_t *end,
                       uint8_t *out, uint64_t out_size, uint64_t at)
{
    uint64_t done = 0;
    while (p < end) {
        uint8_t op = *p++;
        uint64_t offset, size;
        if (op & 0x80) {
            if (delta_copy(op, &p, end, &offset, &size) || offset > base_size
                    || size > base_size - offset || size > out_size - done)
                return fail("damaged image: bad copy in the delta at pack "
                            "offset %d", at);
            memcpy(out + done, base + offset, (size_t)size);
        } else if (op) {
            size = op;
            if (size > (uint64_t)(end - p) || size > out_size - done)
                return fail("damaged image: bad insert in the delta at pack "
                            "offset %d", at);
            memcpy(out + done, p, (size_t)size);
            p += size;
        } else {
            return fail("damaged image: reserved opcode 0 in the delta at pack "
                        "offset %d", at);
        }
        done += size;
    }
    if (done != out_size)
        return fail("damaged image: the delta at pack offset %d builds %d bytes, "
                    "its header says %d", at, done, out_size);
    return 0;
}

/* --- objects ------------------------------------------------------------ */

static uint64_t chain[MAX_CHAIN];   /* delta entries, the requested one first */

/* Apply the delta entry at `at` to the object in `*obj` (`*size` bytes,
 * the last thing in the arena), leaving the target in its place. Peak
 * memory: base + delta + target; then the target moves down over the base. */
static int apply_entry(uint64_t at, uint8_t **obj, uint64_t *size)
{
    struct entry e;
    uint8_t *delta, *target;
    const uint8_t *p, *end;
    uint64_t source_size, target_size;
    size_t obj_mark = arena_offset(*obj);
    if (read_entry(at, &e) || !(delta = inflate_new(&e)))
        return -1;
    p = delta;
    end = delta + e.size;
    if (delta_varint(&p, end, &source_size) || delta_varint(&p, end, &target_size))
        return fail("damaged image: bad delta header at pack offset %d", at);
    if (source_size != *size)
        return fail("damaged image: the delta at pack offset %d expects a base of "
                    "%d bytes, not %d", at, source_size, *size);
    if (!(target = room_for(target_size, at))
            || apply_delta(*obj, *size, p, end, target, target_size, at))
        return -1;
    memmove(*obj, target, (size_t)target_size);
    arena_release(obj_mark);
    arena_alloc((size_t)target_size);   /* same address as *obj: a bump allocator */
    *size = target_size;
    return 0;
}

/* The object whose entry is at pack offset `at`: its type and its bytes,
 * allocated in the arena. */
static int load_at(uint64_t at, int *type, uint8_t **data, uint64_t *size)
{
    struct entry e;
    int depth = 0;
    if (read_entry(at, &e))
        return -1;
    while (e.type == OFS_DELTA || e.type == REF_DELTA) {
        if (depth == MAX_CHAIN)
            return fail("damaged image: a delta chain from pack offset %d is "
                        "longer than %d (a cycle?)", at, (uint64_t)MAX_CHAIN);
        chain[depth++] = e.at;
        if (read_entry(e.base, &e))
            return -1;
    }
    *type = e.type;
    *size = e.size;
    if (!(*data = inflate_new(&e)))
        return -1;
    while (depth--)
        if (apply_entry(chain[depth], data, size))
            return -1;
    return 0;
}

static const char *type_name(int type)
{
    static const char *const names[] = { "?", "commit", "tree", "blob", "tag" };
    return type >= 1 && type <= 4 ? names[type] : "?";
}

/* Git's id of an object: SHA-1 of "<type> <size>\0" and the content. */
static void object_id(int type, const uint8_t *data, uint64_t size, uint8_t id[20])
{
    struct sha1 s;
    char head[32];
    size_t n = strlen(type_name(type));
    memcpy(head, type_name(type), n);
    head[n++] = ' ';
    n += fmt_u64(head + n, size);
    head[n++] = 0;
    sha1_init(&s);
    sha1_update(&s, (const uint8_t *)head, n);
    sha1_update(&s, data, (size_t)size);
    sha1_final(&s, id);
}

/* The object `id`, which must be of type `want` and, when verifying, hash
 * to `id`. `where` names it in messages (a path, or NULL). */
static int load(const uint8_t id[20], int want, const char *where,
                uint8_t **data, uint64_t *size)
{
    uint8_t got[20];
    uint64_t at;
    int type = 0, found = idx_find(id, &at);
    if (found <= 0)
        return found < 0 ? -1 : fail("damaged image: object %o is not in the "
                                     "image", id);
    if (load_at(at, &type, data, size))
        return -1;
    if (type != want)
        return fail("damaged image: object %o is a %s, not a %s", id,
                    type_name(type), type_name(want));
    if (!verifying)
        return 0;
    object_id(type, *data, *size, got);
    if (memcmp(got, id, 20))
        return fail("damaged image: SHA-1 mismatch: the %s %o%s%s%s hashes to %o",
                    type_name(type), id, where ? " (" : "", where ? where : "",
                    where ? ")" : "", got);
    return 0;
}

/* --- commit and trees --------------------------------------------------- */

static int unhex(const uint8_t *text, uint8_t id[20])
{
    for (int i = 0; i < 40; i++) {
        uint8_t c = text[i], v;
        if (c >= '0' && c <= '9')
            v = c - '0';
        else if (c >= 'a' && c <= 'f')
            v = c - 'a' + 10;
        else
            return -1;
        id[i / 2] = (uint8_t)(i & 1 ? id[i / 2] | v : v << 4);
    }
    return 0;
}

/* The root tree's id, from the header's commit ("tree <hex>\n" first). */
static int root_tree(uint8_t tree[20])
{
    uint8_t *data;
    uint64_t size;
    size_t mark = arena_mark();
    if (load(commit_id, OBJ_COMMIT, NULL, &data, &size))
        return -1;
    if (size < 46 || memcmp(data, "tree ", 5) || data[45] != '\n'
            || unhex(data + 5, tree))
        return fail("damaged image: commit %o has no tree line", commit_id);
    arena_release(mark);
    return 0;
}

/* Find `name` in a tree object: 1 (with *mode and id), 0 absent, -1 damaged.
 * Entries: "<octal mode> <name>\0<20-byte id>". */
static int tree_find(const uint8_t *p, const uint8_t *end, const uint8_t tid[20],
                     const char *name, size_t len, uint32_t *mode, uint8_t id[20])
{
    while (p < end) {
        const uint8_t *n;
        uint32_t m = 0;
        for (; p < end && *p >= '0' && *p <= '7' && m < 010000000; p++)
            m = m << 3 | (uint32_t)(*p - '0');
        if (p >= end || *p++ != ' ')
            return fail("damaged image: bad mode in tree %o", tid);
        for (n = p; p < end && *p; p++)
            ;
        if ((uint64_t)(end - p) < 21)
            return fail("damaged image: truncated tree %o", tid);
        if ((size_t)(p - n) == len && memcmp(n, name, len) == 0) {
            *mode = m;
            memcpy(id, p + 1, 20);
            return 1;
        }
        p += 21;
    }
    return 0;
}

/* A path's components, as (start, length) in the caller's text. */
static size_t comp_at[MAX_COMPONENTS], comp_len[MAX_COMPONENTS];
static size_t comps;
static char shown[256];

/* Split on '/', skip "" and ".", ".." drops the previous component (and
 * stops at the root), as docteur_core.reader.split_path does. */
static int split_path(const char *path, size_t length)
{
    size_t i = 0;
    comps = 0;
    while (i < length) {
        size_t start = i;
        while (i < length && path[i] != '/')
            i++;
        size_t len = i - start;
        i++;
        if (len == 0 || (len == 1 && path[start] == '.'))
            continue;
        if (len == 2 && path[start] == '.' && path[start + 1] == '.') {
            if (comps)
                comps--;
            continue;
        }
        if (comps == MAX_COMPONENTS)
            return fail("path has more than %d components", (uint64_t)MAX_COMPONENTS);
        comp_at[comps] = start;
        comp_len[comps++] = len;
    }
    return 0;
}

/* "/a/b" for the first `n` components, for messages (cut to fit). */
static const char *path_text(const char *path, size_t n)
{
    size_t used = 0;
    shown[used++] = '/';
    for (size_t i = 0; i < n; i++) {
        if (i && used < sizeof shown - 1)
            shown[used++] = '/';
        for (size_t j = 0; j < comp_len[i] && used < sizeof shown - 1; j++)
            shown[used++] = path[comp_at[i] + j];
    }
    shown[used] = 0;
    return shown;
}

/* Walk the trees down to `path`: *mode and id of what it names. The trees
 * are dropped from the arena as soon as the next id is known. */
static int walk(const char *path, uint32_t *mode, uint8_t id[20])
{
    if (root_tree(id))
        return -1;
    *mode = MODE_DIR;
    for (size_t i = 0; i < comps; i++) {
        uint8_t *tree, tid[20];
        uint64_t size;
        size_t mark = arena_mark();
        int found;
        if (*mode != MODE_DIR)
            return fail("%s is not a directory", path_text(path, i));
        memcpy(tid, id, 20);
        if (load(tid, OBJ_TREE, path_text(path, i), &tree, &size))
            return -1;
        found = tree_find(tree, tree + size, tid, path + comp_at[i], comp_len[i],
                          mode, id);
        arena_release(mark);
        if (found <= 0)
            return found < 0 ? -1 : fail("%s does not exist", path_text(path, i + 1));
    }
    return 0;
}

int image_get(const char *path, size_t length, uint8_t **data, uint64_t *size)
{
    uint32_t mode;
    uint8_t id[20];
    if (split_path(path, length) || walk(path, &mode, id))
        return -1;
    if (mode == MODE_DIR)
        return fail("%s is a directory", path_text(path, comps));
    if (mode == MODE_GITLINK)
        return fail("%s is a submodule: its files are not in the image",
                    path_text(path, comps));
    return load(id, OBJ_BLOB, path_text(path, comps), data, size);
}
