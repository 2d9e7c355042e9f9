# A Slicer-like build tree for configuring this extension without building Slicer (Testing/Python/test_cmake.py).
# It defines the variables and macros MedCLIPSAM's CMakeLists.txt uses, with the signatures of Slicer 5.10's
# (slicerMacroBuildScriptedModule, ctkMacroCompilePythonScript, slicer_add_python_unittest), and does what they do
# with files at configure time: refuses a listed file that does not exist and copies each into the build tree
# where Slicer would put it. It compiles nothing and packages nothing.
set(Slicer_FOUND TRUE)
set(Slicer_USE_FILE "${CMAKE_CURRENT_LIST_DIR}/UseSlicer.cmake")
set(Slicer_EXTENSION_GENERATE_CONFIG "${CMAKE_CURRENT_LIST_DIR}/SlicerExtensionGenerateConfig.cmake")
set(Slicer_EXTENSION_CPACK "${CMAKE_CURRENT_LIST_DIR}/SlicerExtensionCPack.cmake")
set(Slicer_QTSCRIPTEDMODULES_LIB_DIR "lib/Slicer-5.10/qt-scripted-modules")
set(Slicer_INSTALL_QTSCRIPTEDMODULES_LIB_DIR "${Slicer_QTSCRIPTEDMODULES_LIB_DIR}")
