"""The bundle's files, one typed reader (and writer) each: manifest, calibration, profile,
device profile. Standard library, numpy and the codec only: boards read bundles too."""
