-- kms_pg extension install script, assembled from sql/install/*.sql by the Makefile.
\echo Use "CREATE EXTENSION kms_pg" to load this file. \quit
