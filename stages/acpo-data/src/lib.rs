//! Data stages: fetch/verify sources, prepare CIFAR-10, Anime-Faces, the 256x256 stand-in and prompt sets.
