"""ament_python package edge_cloud_vlm: the core library, the three nodes and the simulator."""

import glob
import os

from setuptools import find_packages, setup

PACKAGE = "edge_cloud_vlm"


def share(folder, pattern="*"):
    """Install repo files under share/<package>/<folder>, keeping sub-folders."""
    entries = {}
    for path in glob.glob(os.path.join(folder, "**", pattern), recursive=True):
        if os.path.isfile(path):
            entries.setdefault(os.path.join("share", PACKAGE, os.path.dirname(path)), []).append(path)
    return sorted(entries.items())


setup(
    name=PACKAGE,
    version="0.1.0",
    # The runtime only: training/ (and bench/, scripts/) stay in the source tree, so robot and
    # cloud installs carry no training code; they find models through specdec.models.artefacts.
    packages=find_packages(include=["specdec*", "specdec_ros*", "edge_spec_drafter*", "cloud_verifier_bridge*",
                                    "go2_vlm_control*", "go2_sim*", "ros_tools*"], exclude=["training", "training.*"]),
    package_data={"specdec.models": ["small_batch_linear.c"]},  # compiled on first use (kernels.py)
    data_files=[
        ("share/ament_index/resource_index/packages", [f"resource/{PACKAGE}"]),
        (f"share/{PACKAGE}", ["package.xml"]),
        *share("launch"),
        *share("config"),
        *share("rviz"),
        *share("models"),
    ],
    install_requires=["setuptools"],
    zip_safe=False,
    maintainer="edge_cloud_vlm maintainers",
    maintainer_email="maintainers@edge-cloud-vlm.dev",
    description="Edge/cloud speculative VLM decoding with early exits for the Unitree Go2.",
    license="Apache-2.0",
    entry_points={
        "console_scripts": [
            "edge_spec_drafter = edge_spec_drafter.node:main",
            "cloud_verifier_bridge = cloud_verifier_bridge.node:main",
            "verifier_server = cloud_verifier_bridge.server:main",
            "link_emulator = specdec.transport.link_emulator:main",
            "launch_runner = ros_tools.launch_runner:main",
            "bag_recorder = ros_tools.bags:record_main",
            "bag_replay = ros_tools.bags:replay_main",
            "go2_vlm_control = go2_vlm_control.controller_node:main",
            "go2_sim = go2_sim.sim_node:main",
        ],
    },
)
