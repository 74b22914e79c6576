"""The GLM-4.7 format layer: prompt rendering and incremental output parsing."""
