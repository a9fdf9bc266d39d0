/* test_sha256.c - the digest that names api keys in the access log (FIPS 180-4 vectors). */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>
#include <cmocka.h>

#include "../../src/sha256.c"

static void hex(const char *in, size_t n, char out[65])
{
	uint8_t d[32];

	sha256(in, n, d);
	for (int k = 0; k < 32; k++)
		snprintf(out + 2 * k, 3, "%02x", d[k]);
}

static void test_known_vectors(void **state)
{
	char out[65], big[1000];

	(void)state;
	hex("", 0, out);
	assert_string_equal(out, "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855");
	hex("abc", 3, out);
	assert_string_equal(out, "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad");
	hex("abcdbcdecdefdefgefghfghighijhijkijkljklmklmnlmnomnopnopq", 56, out);
	assert_string_equal(out, "248d6a61d20638b8e5c026930c3e6039a33ce45964ff2167f6ecedd419db06c1");
	memset(big, 'a', sizeof big);
	hex(big, sizeof big, out);
	assert_string_equal(out, "41edece42d63e8d9bf515a9ba6932e1c20cbc9f5a5d134645adb5db1b9737ea3");
}

static void hmac_hex(const char *key, size_t klen, const char *in, char out[65])
{
	uint8_t d[32];

	hmac_sha256(key, klen, in, strlen(in), d);
	for (int k = 0; k < 32; k++)
		snprintf(out + 2 * k, 3, "%02x", d[k]);
}

/* RFC 4231 test cases 2 and 6 (a key longer than a block) */
static void test_hmac_vectors(void **state)
{
	char out[65], key[131];

	(void)state;
	hmac_hex("Jefe", 4, "what do ya want for nothing?", out);
	assert_string_equal(out, "5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843");
	memset(key, 0xaa, sizeof key);
	hmac_hex(key, sizeof key, "Test Using Larger Than Block-Size Key - Hash Key First", out);
	assert_string_equal(out, "60e431591ee0b67f0d8a26aacbf5b77f8e0bc6213728c5140546040f0ee37f54");
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_known_vectors),
		cmocka_unit_test(test_hmac_vectors),
	};
	return cmocka_run_group_tests_name("sha256", tests, NULL, NULL);
}
