-- kms_pg 1.0 -> 1.1 update script, assembled from sql/update/1.0--1.1/*.sql by the Makefile.
-- Each part upgrades one concern; the 1.1 install script (sql/install/*.sql) must
-- describe the same objects, which t/021 and t/086 compare.  What 1.1 adds or
-- replaces whole is not written twice: a part's "-- @install FILE [OBJECT]" line
-- brings it from the install part FILE (scripts/update_expand.pl).
\echo Use "ALTER EXTENSION kms_pg UPDATE TO '1.1'" to load this file. \quit
