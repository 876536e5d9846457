"""Every built-in regularizer passes d2it's regularizer conformance suite."""

from d2it.testing.regularizer import RegularizerConformance


class TestKL(RegularizerConformance):
    name = "kl"


class TestVQ(RegularizerConformance):
    name = "vq"
    overrides = {"codebook_size": 32}


class TestFSQ(RegularizerConformance):
    name = "fsq"


class TestFSQThreeChannels(RegularizerConformance):
    name = "fsq"
    channels = 3
    overrides = {"levels": (7, 6, 2)}
