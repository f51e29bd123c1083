# Source me: the built workspace plus the project venv and ROS settings used here.
# Usage: source scripts/env.sh
_root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
export AMENT_PREFIX_PATH=$_root/.venv${AMENT_PREFIX_PATH:+:$AMENT_PREFIX_PATH}
# shellcheck disable=SC1091
source "$_root/install/setup.bash"
# The venv's python, and the package's console scripts (verifier_server, launch_runner,
# bag_replay, bag_recorder, ...), which ament_python installs under lib/<package> for `ros2 run`.
export PATH=$_root/install/edge_cloud_vlm/lib/edge_cloud_vlm:$_root/.venv/bin:$PATH
export ROS_AUTOMATIC_DISCOVERY_RANGE=${ROS_AUTOMATIC_DISCOVERY_RANGE:-LOCALHOST}
export PYTHONPATH=$_root${PYTHONPATH:+:$PYTHONPATH}
unset _root
