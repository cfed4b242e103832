-- Rejects of the given sources, by source, stage and reason: the dataset card's reject counts.
-- Variable `sources` (optional): comma-separated source names (unset = every source).
--   python -m pipelines.catalogue card_rejects --param sources=fsl10k,musdb18hq
SELECT coalesce(source, '') AS source, stage, reason, count(*) AS n
FROM rejects
WHERE getvariable('sources') IS NULL
   OR list_contains(string_split(getvariable('sources'), ','), source)
GROUP BY ALL
ORDER BY source, n DESC, stage, reason;
