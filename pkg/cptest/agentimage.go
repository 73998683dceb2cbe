package cptest

import (
	"archive/tar"
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"os"
	"sort"
	"strings"
	"testing"
	"time"

	docker "github.com/moby/moby/client"
)

// ScratchImage describes an image BuildImage builds FROM scratch.
type ScratchImage struct {
	// Files maps a path at the image's root ("agent") to the host file
	// copied there (mode 0755).
	Files      map[string]string
	Entrypoint []string
	Cmd        []string
	// User is the image's USER ("" leaves root).
	User string
	// Env are the image's ENV entries, "KEY=value".
	Env    []string
	Labels map[string]string
}

// BuildImage builds ref FROM scratch as img describes, like
// BuildScratchImage with a Cmd, a User and an environment.
func BuildImage(t testing.TB, d *docker.Client, ref string, img ScratchImage) {
	t.Helper()
	names := make([]string, 0, len(img.Files))
	for n := range img.Files {
		names = append(names, n)
	}
	sort.Strings(names)
	var df strings.Builder
	df.WriteString("FROM scratch\n")
	for _, n := range names {
		fmt.Fprintf(&df, "COPY %s /%s\n", n, n)
	}
	for _, kv := range img.Env {
		k, v, _ := strings.Cut(kv, "=")
		q, _ := json.Marshal(v)
		fmt.Fprintf(&df, "ENV %s=%s\n", k, q)
	}
	if img.User != "" {
		fmt.Fprintf(&df, "USER %s\n", img.User)
	}
	if img.Entrypoint != nil {
		ep, _ := json.Marshal(img.Entrypoint)
		fmt.Fprintf(&df, "ENTRYPOINT %s\n", ep)
	}
	if img.Cmd != nil {
		cmd, _ := json.Marshal(img.Cmd)
		fmt.Fprintf(&df, "CMD %s\n", cmd)
	}

	var buf bytes.Buffer
	tw := tar.NewWriter(&buf)
	add := func(name string, body []byte, mode int64) {
		if err := tw.WriteHeader(&tar.Header{Name: name, Mode: mode, Size: int64(len(body)), Typeflag: tar.TypeReg, ModTime: time.Now()}); err != nil {
			t.Fatal(err)
		}
		if _, err := tw.Write(body); err != nil {
			t.Fatal(err)
		}
	}
	add("Dockerfile", []byte(df.String()), 0o644)
	for _, n := range names {
		body, err := os.ReadFile(img.Files[n])
		if err != nil {
			t.Fatal(err)
		}
		add(n, body, 0o755)
	}
	if err := tw.Close(); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), DockerCallTimeout)
	defer cancel()
	res, err := d.ImageBuild(ctx, &buf, docker.ImageBuildOptions{Tags: []string{ref}, Labels: img.Labels, Remove: true, ForceRemove: true})
	if err != nil {
		t.Fatalf("cptest: building image %s: %v", ref, err)
	}
	defer res.Body.Close()
	out, _ := io.ReadAll(res.Body)
	if bytes.Contains(out, []byte(`"errorDetail"`)) {
		t.Fatalf("cptest: building image %s: %s", ref, out)
	}
	if _, err := d.ImageInspect(ctx, ref); err != nil {
		t.Fatalf("cptest: image %s missing after its build: %v\n%s", ref, err, out)
	}
}

// MarkerAgentMarker is the "marker" field of MarkerAgentSource's lines.
const MarkerAgentMarker = "clawker-test-agent"

// MarkerAgent is the line MarkerAgentSource writes to stdout when it
// starts, as JSON.
type MarkerAgent struct {
	Marker string    `json:"marker"`
	Event  string    `json:"event"` // "started", then "stopping" on SIGTERM
	Time   time.Time `json:"time"`  // its own clock, first thing in main
	PID    int       `json:"pid"`
	UID    int       `json:"uid"`
	GID    int       `json:"gid"`
	Args   []string  `json:"args"`
	// Files are "<mode octal> <uid>:<gid>" of the paths it was told to
	// stat (MARKER_STAT, colon-separated; set it in the image's Env), or
	// "error: ...".
	Files map[string]string `json:"files,omitempty"`
	// Status holds CapEff, CapPrm, CapBnd, NoNewPrivs and Seccomp of
	// /proc/self/status.
	Status map[string]string `json:"status"`
	// Mounts are the filesystem types of /proc/self/mountinfo, with the
	// mount points of each.
	Mounts     map[string][]string `json:"mounts"`
	DockerSock bool                `json:"docker_sock"` // /var/run/docker.sock exists
}

// MarkerAgentSource is a tiny static agent program for FROM scratch test
// images. First thing, it writes one JSON line (MarkerAgent, event
// "started") to stdout: its own clock reading, ids, arguments, what it can
// see of its privileges (capabilities, seccomp, mounts, the Docker socket)
// and the stat of the paths in $MARKER_STAT. Then, given the arguments
// "exit N", it exits with N; otherwise it waits for SIGTERM or SIGINT,
// writes an event "stopping" line and exits 0.
const MarkerAgentSource = `package main

import (
	"bufio"
	"encoding/json"
	"fmt"
	"os"
	"os/signal"
	"strconv"
	"strings"
	"syscall"
	"time"
)

type line struct {
	Marker     string              ` + "`json:\"marker\"`" + `
	Event      string              ` + "`json:\"event\"`" + `
	Time       time.Time           ` + "`json:\"time\"`" + `
	PID        int                 ` + "`json:\"pid\"`" + `
	UID        int                 ` + "`json:\"uid\"`" + `
	GID        int                 ` + "`json:\"gid\"`" + `
	Args       []string            ` + "`json:\"args\"`" + `
	Files      map[string]string   ` + "`json:\"files,omitempty\"`" + `
	Status     map[string]string   ` + "`json:\"status\"`" + `
	Mounts     map[string][]string ` + "`json:\"mounts\"`" + `
	DockerSock bool                ` + "`json:\"docker_sock\"`" + `
}

func main() {
	now := time.Now()
	sigs := make(chan os.Signal, 1)
	signal.Notify(sigs, syscall.SIGTERM, syscall.SIGINT)
	l := line{Marker: "` + MarkerAgentMarker + `", Event: "started", Time: now, PID: os.Getpid(), UID: os.Getuid(), GID: os.Getgid(),
		Args: os.Args[1:], Files: map[string]string{}, Status: map[string]string{}, Mounts: map[string][]string{}}
	if p := os.Getenv("MARKER_STAT"); p != "" {
		for _, f := range strings.Split(p, ":") {
			var st syscall.Stat_t
			if err := syscall.Stat(f, &st); err != nil {
				l.Files[f] = "error: " + err.Error()
				continue
			}
			l.Files[f] = fmt.Sprintf("%04o %d:%d", st.Mode&0o7777, st.Uid, st.Gid)
		}
	}
	if f, err := os.Open("/proc/self/status"); err == nil {
		sc := bufio.NewScanner(f)
		for sc.Scan() {
			k, v, ok := strings.Cut(sc.Text(), ":")
			switch k {
			case "CapEff", "CapPrm", "CapBnd", "NoNewPrivs", "Seccomp":
				if ok {
					l.Status[k] = strings.TrimSpace(v)
				}
			}
		}
		f.Close()
	}
	if f, err := os.Open("/proc/self/mountinfo"); err == nil {
		sc := bufio.NewScanner(f)
		for sc.Scan() {
			pre, post, ok := strings.Cut(sc.Text(), " - ")
			pf, qf := strings.Fields(pre), strings.Fields(post)
			if ok && len(pf) > 4 && len(qf) > 0 {
				l.Mounts[qf[0]] = append(l.Mounts[qf[0]], pf[4])
			}
		}
		f.Close()
	}
	_, err := os.Stat("/var/run/docker.sock")
	l.DockerSock = err == nil
	out, _ := json.Marshal(l)
	fmt.Println(string(out))
	if len(os.Args) == 3 && os.Args[1] == "exit" {
		code, _ := strconv.Atoi(os.Args[2])
		os.Exit(code)
	}
	<-sigs
	out, _ = json.Marshal(line{Marker: l.Marker, Event: "stopping", Time: time.Now(), PID: l.PID})
	fmt.Println(string(out))
}
`
