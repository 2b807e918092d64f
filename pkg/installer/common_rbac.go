package installer

import (
	"context"
	"fmt"
	"strings"

	authorizationv1 "k8s.io/api/authorization/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
)

// Access is one permission to verify with a SelfSubjectAccessReview.
type Access struct {
	Verb      string
	Group     string // "" for the core group
	Resource  string
	Namespace string // "" for cluster-scoped resources
	Name      string // optional
}

// String renders the permission the way "kubectl auth can-i" takes it.
func (a Access) String() string {
	res := a.Resource
	if a.Group != "" {
		res += "." + a.Group
	}
	if a.Name != "" {
		res += "/" + a.Name
	}
	s := a.Verb + " " + res
	if a.Namespace != "" {
		s += " -n " + a.Namespace
	}
	return s
}

// CheckAccess asks the API server whether the current user may do each of the given things and
// returns the denied ones. An error means the review itself failed (for example the API server is
// unreachable), not that access was denied.
func CheckAccess(ctx context.Context, c *Clients, wants []Access) (denied []Access, err error) {
	for _, w := range wants {
		review := &authorizationv1.SelfSubjectAccessReview{
			Spec: authorizationv1.SelfSubjectAccessReviewSpec{
				ResourceAttributes: &authorizationv1.ResourceAttributes{
					Verb: w.Verb, Group: w.Group, Resource: w.Resource, Namespace: w.Namespace, Name: w.Name,
				},
			},
		}
		res, err := c.Kube.AuthorizationV1().SelfSubjectAccessReviews().Create(ctx, review, metav1.CreateOptions{})
		if err != nil {
			return nil, fmt.Errorf("check access %q: %w", w, err)
		}
		if !res.Status.Allowed {
			denied = append(denied, w)
		}
	}
	return denied, nil
}

// CheckAccessInto runs CheckAccess and records one preflight line: ok, or an error listing the denied
// permissions and the "kubectl auth can-i" command to confirm them.
func CheckAccessInto(ctx context.Context, p *Preflight, c *Clients, wants []Access) {
	denied, err := CheckAccess(ctx, c, wants)
	if err != nil {
		p.Warn("", "could not verify permissions: %v", err)
		return
	}
	if len(denied) == 0 {
		p.OK("permissions: allowed to make the needed changes (%d checks)", len(wants))
		return
	}
	names := make([]string, len(denied))
	for i, d := range denied {
		names[i] = d.String()
	}
	p.Error(fmt.Sprintf("ask a cluster administrator, or check with: kubectl auth can-i %s%s", names[0], c.contextFlag()),
		"permissions: not allowed to %s", strings.Join(names, ", "))
}
