--
-- 07_core_pairs: the context given as key, value arguments
-- (kms_encrypt_pairs / kms_decrypt_pairs) is the same context as the jsonb
-- one: values sealed one way open the other way, types still matter
-- (1 is not '1'), and every malformed call gets its own error.
--
SET kms_pg.provider = 'local';
SELECT kms_create_key('alias/regress_pairs') IS NOT NULL AS created;
SET kms_pg.key_id = 'alias/regress_pairs';

CREATE FUNCTION pg_temp.try(f text) RETURNS text LANGUAGE plpgsql AS $$
DECLARE r text;
BEGIN
  EXECUTE f INTO r;
  RETURN 'ok: ' || coalesce(r, 'NULL');
EXCEPTION WHEN OTHERS THEN
  RETURN SQLSTATE || ': ' || SQLERRM;
END $$;

-- pairs -> jsonb and jsonb -> pairs, over rows with integers, text,
-- numerics with trailing zeros, negative numbers and booleans
CREATE TEMP TABLE rows AS
SELECT i AS id, 't' || (i % 3) AS tenant, (i / 4.0)::numeric(10,2) AS amount, (i % 2 = 0) AS flag
FROM generate_series(-5, 200) i;
CREATE TEMP TABLE sealed AS
SELECT r.*,
       kms_encrypt_text_pairs('row ' || id, NULL, 'id', id, 'tenant', tenant, 'amount', amount, 'flag', flag) AS by_pairs,
       kms_encrypt_text('row ' || id, jsonb_build_object('id', id, 'tenant', tenant, 'amount', amount, 'flag', flag)) AS by_jsonb
FROM rows r;
SELECT count(*) AS total,
       count(*) FILTER (WHERE kms_decrypt_text(by_pairs, jsonb_build_object('flag', flag, 'amount', amount, 'tenant', tenant, 'id', id)) = 'row ' || id) AS pairs_read_by_jsonb,
       count(*) FILTER (WHERE kms_decrypt_text_pairs(by_jsonb, 'tenant', tenant, 'id', id, 'flag', flag, 'amount', amount) = 'row ' || id) AS jsonb_read_by_pairs,
       count(*) FILTER (WHERE convert_from(kms_decrypt_pairs(by_pairs, 'id', id, 'tenant', tenant, 'amount', amount, 'flag', flag), 'UTF8') = 'row ' || id) AS pairs_read_by_pairs
FROM sealed;

-- bigint, smallint and literals
SELECT kms_decrypt_text(kms_encrypt_text_pairs('x', 'alias/regress_pairs', 'big', 9007199254740993::bigint, 'small', 7::smallint, 'lit', 'v'),
                        '{"big": 9007199254740993, "small": 7, "lit": "v"}') AS mixed;

-- types still matter: the number 1 is not the string '1', true is not 'true'
SELECT pg_temp.try($$SELECT kms_decrypt_text_pairs(kms_encrypt_text_pairs('x', NULL, 'id', 1), 'id', '1')$$) AS number_vs_string;
SELECT pg_temp.try($$SELECT kms_decrypt_text_pairs(kms_encrypt_text_pairs('x', NULL, 'f', true), 'f', 'true'::text)$$) AS bool_vs_string;
SELECT pg_temp.try($$SELECT kms_decrypt_text_pairs(kms_encrypt_text_pairs('x', NULL, 'n', 1.50), 'n', 1.5)$$) AS numeric_spelling;
-- a value copied to another row does not open there
SELECT pg_temp.try(format('SELECT kms_decrypt_text_pairs(%L::bytea, ''id'', 2, ''tenant'', ''t2'', ''amount'', 0.50, ''flag'', true)',
                          (SELECT by_pairs FROM sealed WHERE id = 1))) AS copied_to_row_2;

-- malformed calls
SELECT pg_temp.try($$SELECT kms_encrypt_pairs('x'::bytea, NULL, 'id')::text$$) AS odd_arguments;
SELECT pg_temp.try($$SELECT kms_encrypt_pairs('x'::bytea, NULL, 'id', 1, 'id', 2)::text$$) AS duplicate_key;
SELECT pg_temp.try($$SELECT kms_encrypt_pairs('x'::bytea, NULL, '', 1)::text$$) AS empty_key;
SELECT pg_temp.try($$SELECT kms_encrypt_pairs('x'::bytea, NULL, NULL::text, 1)::text$$) AS null_key;
SELECT pg_temp.try($$SELECT kms_encrypt_pairs('x'::bytea, NULL, 'id', NULL::int)::text$$) AS null_value;
SELECT pg_temp.try($$SELECT kms_encrypt_pairs('x'::bytea, NULL, 1, 1)::text$$) AS integer_key;
SELECT pg_temp.try($$SELECT kms_encrypt_pairs('x'::bytea, NULL, 'd', interval '1 day')::text$$) AS interval_value;
-- uuid, date, timestamp, char(n), name and enum values: as to_jsonb() writes them.
CREATE TYPE pairs_mood AS ENUM ('calm', 'busy');
SELECT convert_from(kms_decrypt(
         kms_encrypt_pairs('typed'::bytea, NULL, 'd', date '2026-01-01', 'ts', timestamp '2026-01-01 10:11:12.5',
                           'u', 'a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11'::uuid, 'c', 'ab'::char(4),
                           'n', 'nm'::name, 'm', 'busy'::pairs_mood),
         jsonb_build_object('d', date '2026-01-01', 'ts', timestamp '2026-01-01 10:11:12.5',
                            'u', 'a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11'::uuid, 'c', 'ab'::char(4),
                            'n', 'nm'::name, 'm', 'busy'::pairs_mood)), 'UTF8') AS typed_values_match_jsonb;
DROP TYPE pairs_mood;
SELECT pg_temp.try($$SELECT kms_encrypt_pairs('x'::bytea, NULL, 'n', 'NaN'::numeric)::text$$) AS nan_value;
SELECT pg_temp.try($$SELECT kms_encrypt_pairs('x'::bytea, NULL, VARIADIC ARRAY['id', '1'])::text$$) AS variadic_array;
SELECT kms_encrypt_pairs(NULL, NULL, 'id', 1) IS NULL AS null_plaintext;

-- decrypting needs the grant, as for kms_decrypt
CREATE ROLE regress_pairs_nogrant;
SET ROLE regress_pairs_nogrant;
SELECT pg_temp.try($$SELECT kms_decrypt_pairs('\x00'::bytea, 'id', 1)::text$$) AS without_grant;
RESET ROLE;
DROP ROLE regress_pairs_nogrant;
RESET kms_pg.key_id;
