// `node --test` (no arguments) only discovers files named like *.test.mjs;
// the tests live in test_client_kms.mjs, which can also be run directly with
// `node --test test_client_kms.mjs`.
import "./test_client_kms.mjs";
