-- kms_pg 1.0 -> 1.1 update script, assembled from sql/update/1.0--1.1/*.sql by the Makefile.
-- Each part upgrades one concern; the 1.1 install script (sql/install/*.sql) must
-- describe the same objects, which test/upgrade_check compares.
\echo Use "ALTER EXTENSION kms_pg UPDATE TO '1.1'" to load this file. \quit
