package installer

import (
	"os"
	"path/filepath"
	"testing"

	"github.com/ks-mc/ks-mc/pkg/installer/cfgfile"
	"github.com/ks-mc/ks-mc/pkg/kubesphere"
)

// A file edited by join -f / init-host -f, read as the API server stores it, needs no
// ClusterConfiguration patch from a later plain join / init-host (issue 11).
func TestFileEditsLeaveNothingForTheLiveCommands(t *testing.T) {
	const jwt = Secret("Tst0jwtSecretFORgoldenFILES12345")
	for _, in := range []string{"ks-installer-v3.4.1.yaml", "kubekey-v3.4.1.yaml", "edge/crlf.yaml", "edge/flow.yaml", "edge/missing-sections.yaml", "edge/json.json"} {
		b, err := os.ReadFile(filepath.Join("cfgfile", "testdata", in))
		if err != nil {
			t.Fatal(err)
		}
		f, err := cfgfile.Parse(b)
		if err != nil {
			t.Fatal(err)
		}
		for role, edits := range map[string][]cfgfile.Edit{
			kubesphere.RoleMember: MemberFileEdits(f, jwt),
			kubesphere.RoleHost:   HostFileEdits(f, "http://203.0.113.10:30881"),
		} {
			out, err := f.Apply(edits)
			if err != nil {
				t.Fatalf("%s %s: %v", in, role, err)
			}
			g, err := cfgfile.Parse(out)
			if err != nil {
				t.Fatal(err)
			}
			var p MergePatch
			if role == kubesphere.RoleMember {
				p = MemberPatch(fileCC(g), jwt)
			} else {
				p = HostPatch(fileCC(g), "http://203.0.113.10:30881")
			}
			if !p.Empty() {
				t.Errorf("%s %s: a live run would still patch %v", in, role, p.Redacted(jwtPath))
			}
			if len(MemberFileEdits(g, jwt)) != 0 && role == kubesphere.RoleMember || len(HostFileEdits(g, "http://203.0.113.10:30881")) != 0 && role == kubesphere.RoleHost {
				t.Errorf("%s %s: a second run would edit again", in, role)
			}
		}
	}
}
