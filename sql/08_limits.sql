-- Oversized inputs get clear errors or work, never memory blowups.
--
-- Values: a 200 MB value is encrypted and decrypted.  The hard limit is
-- a bytea's 1 GB: a plaintext whose ciphertext would exceed it is refused
-- with 54000 before any buffer is allocated (kms_seal checks the size
-- first).  Exercising that edge needs ~2 GB of memory for the input alone,
-- more than CI machines give one test; 200 MB keeps the whole path (TOAST,
-- one-shot AES-GCM, the wiped output buffer) honest in about a second.
-- Contexts: 1024 keys work, 1025 are refused; a canonical context over
-- 64 kB is refused.
SET kms_pg.provider = local;
SELECT kms_create_key('alias/regress-08-limits') IS NOT NULL AS created;

-- 200 MB round trip, compared by digest (printing it would be absurd)
SELECT length(ct) - 200 * 1024 * 1024 AS overhead,
       md5(kms_decrypt(ct, '{"big": true}')) = md5(convert_to(repeat('0123456789abcdef', 200 * 1024 * 1024 / 16), 'UTF8')) AS round_trip
FROM (SELECT kms_encrypt(convert_to(repeat('0123456789abcdef', 200 * 1024 * 1024 / 16), 'UTF8'),
                         '{"big": true}', 'alias/regress-08-limits') AS ct) AS s;

-- 1024 context keys: the maximum
WITH ctx AS (SELECT jsonb_object_agg('k' || i, i) AS c FROM generate_series(1, 1024) AS i)
SELECT kms_decrypt_text(kms_encrypt_text('many keys', c, 'alias/regress-08-limits'), c) AS decrypted
FROM ctx;

-- 1025 keys: refused

WITH ctx AS (SELECT jsonb_object_agg('k' || i, i) AS c FROM generate_series(1, 1025) AS i)
SELECT kms_encrypt_text('too many keys', c, 'alias/regress-08-limits') FROM ctx;
-- the same context is refused for decryption too, before the value is looked at
WITH ctx AS (SELECT jsonb_object_agg('k' || i, i) AS c FROM generate_series(1, 1025) AS i)
SELECT kms_decrypt_text('\xc54b5047'::bytea, c) FROM ctx;

-- a context whose canonical form exceeds 64 kB: refused
SELECT kms_encrypt_text('big context', jsonb_build_object('k', repeat('v', 70000)), 'alias/regress-08-limits');
-- just under the limit works
SELECT length(kms_decrypt_text(kms_encrypt_text('near limit', jsonb_build_object('k', repeat('v', 65000)),
                                                'alias/regress-08-limits'),
                               jsonb_build_object('k', repeat('v', 65000)))) AS near_limit_len;

-- a ciphertext claiming more than the wrapped-DEK limit is refused as corrupt
SELECT kms_is_ciphertext('\xc54b5047010101610004010000000000000000000000000000000000000000000000000000000000'::bytea) AS oversized_wrapped_is_ciphertext;
