"""Data helpers below the models: AudioSet label names (`audioset_labels`), audio files read and tagged
(`audio_io`, used by `dcls-zoo tag`) and spike-train binning (`spikes`: SHD/SSC)."""
