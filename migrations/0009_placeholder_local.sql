-- Branch-local placeholder (runtime-records): numbers 0009 and 0010 belong to other branches'
-- migrations; this file only keeps the sequence whole here. Drop it when merging.
SELECT 1;
