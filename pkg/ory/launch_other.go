//go:build !linux

package ory

import "os"

// The servers only run as another user in the control plane's Linux
// container; elsewhere StartProcess refuses a ProcessConfig with a User.
const launcherPath = ""

func launcherArgs(User, string, []string) []string { return nil }

func (User) searchable(os.FileInfo) bool { return false }
