/* sha256.h - SHA-256 (FIPS 180-4), for naming secrets without showing them. */
#ifndef SG_SHA256_H
#define SG_SHA256_H

#include <stddef.h>
#include <stdint.h>

/* The digest of P (N bytes) into OUT. */
void sha256(const void *p, size_t n, uint8_t out[32]);
/* HMAC-SHA256 (RFC 2104) of P (N bytes) under KEY (KLEN bytes) into OUT. */
void hmac_sha256(const void *key, size_t klen, const void *p, size_t n, uint8_t out[32]);

#endif
