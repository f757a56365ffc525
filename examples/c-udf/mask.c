/*
 * A Tidegate UDF written in C: c_mask_mobile(utf8) -> utf8 keeps the first 3 and last 4 digits
 * of an 11-digit mobile number and stars the middle; anything else is NULL.
 *
 * It speaks the ABI of udf-sdk/ABI.md with nothing but C: no libc, no imports. Built by
 * scripts/build-c-udf with zig's C compiler for wasm32-freestanding.
 */
#include <stdint.h>

typedef uint32_t u32;
typedef int32_t i32;

#define EXPORT(name) __attribute__((export_name(name)))

enum { UTF8 = 4, MAX_ROWS = 1 << 16, INPUT_BYTES = 4 << 20, DATA_BYTES = 1 << 20 };

static const char manifest[] = "scalar c_mask_mobile(utf8) -> utf8";
static const char message[] = "c_mask_mobile: unexpected input";

static u32 manifest_desc[2];
static u32 error_desc[2];
static uint64_t input[INPUT_BYTES / 8];
static u32 out_desc[7];
static uint8_t out_valid[MAX_ROWS / 8];
static i32 out_offsets[MAX_ROWS + 1];
static char out_data[DATA_BYTES];

static u32 addr(const void *p) { return (u32)(uintptr_t)p; }

EXPORT("tg_abi_version") i32 tg_abi_version(void) { return 1; }

EXPORT("tg_manifest") u32 tg_manifest(void) {
    manifest_desc[0] = addr(manifest);
    manifest_desc[1] = sizeof manifest - 1;
    return addr(manifest_desc);
}

EXPORT("tg_error") u32 tg_error(void) {
    error_desc[0] = addr(message);
    error_desc[1] = sizeof message - 1;
    return addr(error_desc);
}

EXPORT("tg_alloc") u32 tg_alloc(i32 size) {
    if (size < 0 || (u32)size > sizeof input) return 0;
    return addr(input);
}

static int is_mobile(const char *s, i32 len) {
    if (len != 11 || s[0] != '1') return 0;
    for (i32 i = 0; i < len; i++)
        if (s[i] < '0' || s[i] > '9') return 0;
    return 1;
}

EXPORT("tg_scalar") u32 tg_scalar(i32 fn, u32 batch) {
    const u32 *b = (const u32 *)(uintptr_t)batch;
    u32 rows = b[0], cols = b[1];
    const u32 *c = b + 2; /* type, len, null_count, validity, offsets, data, data_len */
    if (fn != 0 || cols != 1 || c[0] != UTF8 || c[1] != rows || rows > MAX_ROWS) return 0;
    const uint8_t *valid = (const uint8_t *)(uintptr_t)c[3];
    const i32 *offsets = (const i32 *)(uintptr_t)c[4];
    const char *data = (const char *)(uintptr_t)c[5];
    u32 nulls = 0;
    i32 at = 0;
    out_offsets[0] = 0;
    for (u32 i = 0; i < rows; i++) {
        if (i % 8 == 0) out_valid[i / 8] = 0;
        const char *s = data + offsets[i];
        i32 len = offsets[i + 1] - offsets[i];
        int present = !valid || (valid[i / 8] >> (i % 8)) & 1;
        if (present && is_mobile(s, len) && at + 11 <= DATA_BYTES) {
            for (int k = 0; k < 11; k++) out_data[at + k] = (k >= 3 && k < 7) ? '*' : s[k];
            at += 11;
            out_valid[i / 8] |= (uint8_t)(1u << (i % 8));
        } else {
            nulls++;
        }
        out_offsets[i + 1] = at;
    }
    out_desc[0] = UTF8;
    out_desc[1] = rows;
    out_desc[2] = nulls;
    out_desc[3] = nulls ? addr(out_valid) : 0;
    out_desc[4] = addr(out_offsets);
    out_desc[5] = addr(out_data);
    out_desc[6] = (u32)at;
    return addr(out_desc);
}
