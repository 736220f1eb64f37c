# Included by the interface packages in ros_interfaces/ after rosidl_generate_interfaces(),
# once every dependency's CMake targets have been imported.
#
# The ROS 2 wheels on PyPI export `<pkg>__rosidl_generator_py` CMake targets whose
# INTERFACE_INCLUDE_DIRECTORIES point at the Python of the machine that built the wheels
# (/opt/python/cp3XX-.../include). Those paths do not exist here, so CMake refuses to
# generate. Point them at this interpreter's headers and NumPy's instead. The loop touches
# only imported targets of this directory, so it is a no-op against a normal ROS install.
find_package(Python3 REQUIRED COMPONENTS Interpreter Development.Module NumPy)

get_property(_pose_node_imported DIRECTORY PROPERTY IMPORTED_TARGETS)
foreach(_target IN LISTS _pose_node_imported)
  if(_target MATCHES "__rosidl_generator_py$")
    set_target_properties(${_target} PROPERTIES
      INTERFACE_INCLUDE_DIRECTORIES "${Python3_INCLUDE_DIRS};${Python3_NumPy_INCLUDE_DIRS}")
  endif()
endforeach()
unset(_pose_node_imported)
