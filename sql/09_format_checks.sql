--
-- 09_format_checks: what docs/format.md promises a reader, checked when a
-- value is parsed, so kms_ciphertext_info and kms_decrypt agree:
--   * the provider-context name block is strictly ascending (sorted, no
--     name twice), else XX001;
--   * a local wrapped DEK is 65 bytes in wrap format 1, else XX001;
--   * appended bytes fail authentication (22000): there is no length field;
--   * the canonical context may be exactly 65,536 bytes, not one more;
--   * the SQLSTATE of every refused key/value-pairs argument, and the
--     spelling of the typed values the pairs form accepts.
--
SET kms_pg.provider = 'local';
SELECT length(kms_create_key('alias/regress_fmt09')) AS key_id_len;
SET kms_pg.key_id = 'alias/regress_fmt09';

-- 'ok' or the SQLSTATE of one expression
CREATE FUNCTION pg_temp.st(expr text) RETURNS text LANGUAGE plpgsql AS $$
BEGIN
  EXECUTE 'SELECT (' || expr || ') IS NOT NULL';
  RETURN 'ok';
EXCEPTION WHEN OTHERS THEN
  RETURN SQLSTATE;
END $$;

-- A value whose provider context is {a, b}: the name block is
-- 02 01 'a' 01 'b' at byte offsets 43..47 (7 + a 36-byte key id), W at 48,
-- the wrapped DEK (format byte first) from 50.
SET kms_pg.kms_context_keys = 'a, b';
CREATE TEMP TABLE v AS
SELECT kms_encrypt_text('format checks', '{"a": 1, "b": 2, "c": 3}') AS ct;
RESET kms_pg.kms_context_keys;
SELECT encode(substring(ct FROM 44 FOR 5), 'hex') AS name_block,
       encode(substring(ct FROM 49 FOR 3), 'hex') AS w_and_wrap_format
FROM v;

CREATE TEMP TABLE forged AS
SELECT 'as written' AS what, ct FROM v
UNION ALL
SELECT 'names out of order (b, a)', set_byte(set_byte(ct, 45, ascii('b')), 47, ascii('a')) FROM v
UNION ALL
SELECT 'same name twice (a, a)', set_byte(ct, 47, ascii('a')) FROM v
UNION ALL
SELECT 'local wrapped DEK of 64 bytes', set_byte(ct, 49, 64) FROM v
UNION ALL
SELECT 'local wrap format 2', set_byte(ct, 50, 2) FROM v
UNION ALL
SELECT 'one byte appended', ct || '\x00'::bytea FROM v;

-- kms_ciphertext_info (parse only) and kms_decrypt answer alike
SELECT what,
       pg_temp.st(format('kms_ciphertext_info(%L::bytea)', ct)) AS info,
       kms_is_ciphertext(ct) AS is_ciphertext,
       pg_temp.st(format('kms_decrypt_text(%L::bytea, %L)', ct, '{"a": 1, "b": 2, "c": 3}')) AS decrypt
FROM forged ORDER BY what;

-- the canonical context: 4 + (9 + 1 + 65522) = 65,536 bytes is accepted
SELECT pg_temp.st(format('kms_encrypt_text(%L, jsonb_build_object(%L, repeat(%L, 65522)))', 'x', 'k', 'v')) AS exactly_65536,
       pg_temp.st(format('kms_encrypt_text(%L, jsonb_build_object(%L, repeat(%L, 65523)))', 'x', 'k', 'v')) AS bytes_65537,
       pg_temp.st(format('kms_encrypt_text_pairs(%L, NULL, %L, repeat(%L, 65522))', 'x', 'k', 'v')) AS pairs_exactly_65536,
       pg_temp.st(format('kms_encrypt_text_pairs(%L, NULL, %L, repeat(%L, 65523))', 'x', 'k', 'v')) AS pairs_65537;

-- every refused pairs argument, with the SQLSTATE docs/format.md gives
SELECT what, pg_temp.st(expr) AS sqlstate
FROM (VALUES
  ('int key',            $$kms_encrypt_text_pairs('x', NULL, 1, 'v')$$),
  ('interval value',     $$kms_encrypt_text_pairs('x', NULL, 'k', interval '1 day')$$),
  ('bytea value',        $$kms_encrypt_text_pairs('x', NULL, 'k', '\x01'::bytea)$$),
  ('jsonb value',        $$kms_encrypt_text_pairs('x', NULL, 'k', '{}'::jsonb)$$),
  ('float8 value',       $$kms_encrypt_text_pairs('x', NULL, 'k', 1.5::float8)$$),
  ('NULL key',           $$kms_encrypt_text_pairs('x', NULL, NULL::text, 'v')$$),
  ('NULL value',         $$kms_encrypt_text_pairs('x', NULL, 'k', NULL::text)$$),
  ('NaN numeric',        $$kms_encrypt_text_pairs('x', NULL, 'k', 'NaN'::numeric)$$),
  ('infinite numeric',   $$kms_encrypt_text_pairs('x', NULL, 'k', 'Infinity'::numeric)$$),
  ('odd argument count', $$kms_encrypt_text_pairs('x', NULL, 'k', 'v', 'k2')$$),
  ('VARIADIC array',     $$kms_encrypt_text_pairs('x', NULL, VARIADIC ARRAY['k', 'v'])$$),
  ('empty key',          $$kms_encrypt_text_pairs('x', NULL, '', 'v')$$),
  ('key twice',          $$kms_encrypt_text_pairs('x', NULL, 'k', 'v', 'k', 'w')$$)
) AS t(what, expr) ORDER BY what;

-- uuid, date and timestamp values (and char(n), name, enums) are strings,
-- spelt as to_jsonb() spells them: the pairs and jsonb forms agree
SELECT kms_decrypt_text(kms_encrypt_text_pairs('d', NULL, 'v', DATE '2024-01-02'),
                        jsonb_build_object('v', DATE '2024-01-02')) AS date_value,
       kms_decrypt_text(kms_encrypt_text_pairs('u', NULL, 'v', 'a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11'::uuid),
                        '{"v": "a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11"}') AS uuid_value,
       kms_decrypt_text(kms_encrypt_text_pairs('t', NULL, 'v', TIMESTAMP '2024-01-02 03:04:05'),
                        '{"v": "2024-01-02T03:04:05"}') AS timestamp_value;

-- an untyped literal is text: '42' and 42 are different contexts
CREATE TEMP TABLE lit AS SELECT kms_encrypt_text_pairs('untyped', NULL, 'id', '42') AS ct;
SELECT kms_decrypt_text_pairs(ct, 'id', '42') AS as_written,
       kms_decrypt_text_pairs(ct, 'id', '42'::text) AS as_text,
       kms_decrypt_text(ct, '{"id": "42"}') AS as_jsonb_string,
       pg_temp.st(format('kms_decrypt_text_pairs(%L::bytea, %L, 42)', ct, 'id')) AS as_number
FROM lit;
